"""The onnx stage on both example models, config/model checks, sha256, bad inputs, micro-batching, restarts."""

import json

import numpy as np
import onnxruntime as ort
import pytest

from pipeline import ConfigError, load_pipeline
from pipeline.batch import Batch
from pipeline.inference.preprocess import frames_to_tensor, resize_stack
from pipeline.stages.onnx import SKAB_SENSORS, Onnx
from pipeline.testing import FakeClock, build_stage
from tests.support.onnx_models import MODELS, SHARED, classifier, sum_plus

CAMERA = MODELS / "camera_counter.onnx"
PUMP = MODELS / "pump_state.onnx"


def pipeline_yaml(stage: dict) -> str:
    return json.dumps({
        "sources": [{"id": "src", "type": "replay", "path": "unused.csv"}],
        "stages": [{"id": "infer", "type": "onnx", "inputs": ["src"], **stage}],
        "sinks": [{"id": "out", "type": "stdout", "inputs": ["infer"]}],
    }) + "\n"


def camera_stage(**extra):
    return {"model": str(CAMERA), "feeds": {"frame": {"source": "frame"}},
            "outputs": {"count": {"decode": "regression", "field": "people"}, "occupancy": {"decode": "raw"}}, **extra}


def raw_session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------- example models through a pipeline
def test_camera_model_in_pipeline_matches_raw_onnxruntime():
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (576, 768, 3), dtype=np.uint8) for _ in range(5)]
    frames.append(rng.integers(0, 256, (576, 768), dtype=np.uint8))  # gray frames work too
    p = load_pipeline(pipeline_yaml(camera_stage(max_batch=4)))
    out = p.run_records([{"ts": i, "tags": {"cam": "c1"}, "frame": f} for i, f in enumerate(frames)])["out"]
    assert len(out) == 6
    gray = [f if f.ndim == 2 else (f.astype(np.float32) @ np.array([0.114, 0.587, 0.299], np.float32)) for f in frames]
    x = np.stack([g.reshape(96, 6, 128, 6).mean(axis=(1, 3)) / 255 for g in gray]).astype(np.float32)[:, None]
    count, occ = raw_session(CAMERA).run(None, {"frame": x})
    np.testing.assert_allclose([r["fields"]["people"] for r in out], count[:, 0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out[2]["occupancy"], occ[2], atol=1e-5)
    assert {r["tags"]["model_version"] for r in out} == {"camera_counter@" + (MODELS / "camera_counter.onnx.sha256").read_text()[:12]}


def test_camera_model_on_the_real_video_agrees_with_opencv_preprocessing():
    cv2 = pytest.importorskip("cv2", reason="opencv-python-headless (dev dependency) is not installed")
    video = SHARED / "video" / "vtest.avi"
    if not video.exists():
        pytest.skip(f"{video} is missing (shared data set)")
    cap = cv2.VideoCapture(str(video))
    frames = [cap.read()[1] for _ in range(16)]
    p = load_pipeline(pipeline_yaml(camera_stage()))
    out = p.run_records([{"ts": i, "frame": f} for i, f in enumerate(frames)])["out"]
    x = np.stack([cv2.resize(cv2.cvtColor(f, cv2.COLOR_BGR2GRAY), (128, 96), interpolation=cv2.INTER_AREA)
                  for f in frames]).astype(np.float32)[:, None] / 255
    expected = raw_session(CAMERA).run(["count"], {"frame": x})[0][:, 0]
    got = np.array([r["fields"]["people"] for r in out])
    assert np.abs(got - expected).max() < 0.15   # cv2 rounds gray/resize to uint8; we keep floats
    assert 1 <= got.mean() <= 12                 # a busy square: a handful of people


def skab_records(n=150):
    path = SHARED / "skab" / "valve1" / "1.csv"
    if path.exists():
        import pandas as pd
        df = pd.read_csv(path, sep=";").head(n)
        return [{"ts": float(i), "tags": {"pump": "p1"}, "fields": {s: float(df[s].iloc[i]) for s in SKAB_SENSORS}}
                for i in range(len(df))]
    rng = np.random.default_rng(1)  # same shape of data without the shared folder
    return [{"ts": float(i), "tags": {"pump": "p1"}, "fields": {s: float(v) for s, v in zip(SKAB_SENSORS, rng.normal(1, 0.1, 8))}}
            for i in range(n)]


def test_pump_model_in_pipeline_matches_raw_windows():
    recs = skab_records()
    stage = {"model": str(PUMP), "feeds": {"window": {"source": "window", "length": 60, "key": ["pump"], "fields": SKAB_SENSORS}},
             "outputs": {"probabilities": {"decode": "topk", "k": 2, "field": "state"}}}
    p = load_pipeline(pipeline_yaml(stage))
    out = p.run_records(recs, batch_size=7)["out"]  # odd batches: windows must span batch boundaries
    assert len(out) == len(recs) - 59
    assert p.metrics.get("infer", "window_filling") == 59
    x = np.array([[list(r["fields"].values()) for r in recs[i - 59:i + 1]] for i in range(59, len(recs))], np.float32)
    probs = raw_session(PUMP).run(None, {"window": x})[0]
    labels = (MODELS / "pump_state.labels").read_text().split()
    assert [r["tags"]["state_1"] for r in out] == [labels[i] for i in probs.argmax(1)]
    np.testing.assert_allclose([r["fields"]["state_1_probability"] for r in out], probs.max(1), rtol=1e-5)


# ---------------------------------------------------------------- config vs model
@pytest.mark.parametrize("inputs, outputs, expected", [
    ({"frames": {"source": "frame"}}, None, "model input(s) 'frame' have no entry in `feeds:`"),
    ({"frame": {"source": "frame", "color": "rgb"}}, None, "model input 'frame' is [batch, 1, 96, 128] float32 but the config builds [batch, 3, 96, 128]"),
    ({"frame": {"source": "frame", "layout": "NHWC"}}, None, "the config builds [batch, 1, 96, 1] — check `layout`"),
    ({"frame": {"source": "frame", "dtype": "uint8"}}, None, "`dtype: uint8` is configured"),
    ({"frame": {"source": "fields", "fields": ["a"]}}, None, "is [batch, 1, 96, 128] float32 but the config builds [batch, 1]"),
    ({"frame": {"source": "frame"}}, {"people": {"decode": "regression"}}, "`outputs:` names 'people'"),
    ({"frame": {"source": "frame"}}, {"count": {"decode": "label", "labels": ["a", "b"]}}, "1 classes) but there are 2 labels"),
])
def test_config_model_mismatch_is_a_clear_start_error(inputs, outputs, expected):
    with pytest.raises(ConfigError) as err:
        load_pipeline(pipeline_yaml({"model": str(CAMERA), "feeds": inputs, "outputs": outputs}))
    assert expected in str(err.value) and "stage 'infer' (onnx)" in str(err.value)


def test_window_length_mismatch_names_the_fix():
    with pytest.raises(ConfigError, match=r"\[batch, 60, 8\] float32 but the config builds \[batch, 30, 8\] — check `length`"):
        load_pipeline(pipeline_yaml({"model": str(PUMP), "feeds": {"window": {"source": "window", "length": 30, "fields": SKAB_SENSORS}}}))


def test_unloadable_model_is_a_start_error(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="onnxruntime cannot load"):
        load_pipeline(pipeline_yaml({"model": str(bad), "feeds": {"x": {"source": "fields", "fields": ["a"]}}}))
    with pytest.raises(ConfigError, match="cannot read model"):
        load_pipeline(pipeline_yaml({"model": str(tmp_path / "nope.onnx"), "feeds": {"x": {"source": "fields", "fields": ["a"]}}}))


# ---------------------------------------------------------------- integrity
def test_sha256_pin_and_sidecar_refuse_a_tampered_model(tmp_path):
    model = sum_plus(tmp_path / "m.onnx", sidecar=True)
    good = (tmp_path / "m.onnx.sha256").read_text().split()[0]
    cfg = {"model": str(model), "feeds": {"x": {"source": "fields", "fields": ["a", "b", "c"]}}}
    load_pipeline(pipeline_yaml({**cfg, "sha256": good}))
    with pytest.raises(ConfigError, match=f"expected {'0' * 64}"):
        load_pipeline(pipeline_yaml({**cfg, "sha256": "0" * 64}))
    model.write_bytes(model.read_bytes() + b"\0")          # tampered file, stale sidecar
    with pytest.raises(ConfigError, match="the file changed or is not the pinned model"):
        load_pipeline(pipeline_yaml(cfg))


# ---------------------------------------------------------------- bad input
def test_bad_frames_and_fields_are_dead_lettered_with_reasons():
    p = load_pipeline(pipeline_yaml(camera_stage()))
    good = np.zeros((96, 128), np.uint8)
    recs = [{"ts": 0, "frame": good}, {"ts": 1, "frame": np.zeros(10, np.uint8)},
            {"ts": 2, "frame": np.zeros((96, 128), np.int32)}, {"ts": 3, "fields": {"a": 1}},
            {"ts": 4, "frame": np.zeros((96, 128, 2), np.uint8)}, {"ts": 5, "frame": good}]
    out = p.run_records(recs)["out"]
    assert [r["ts"] for r in out] == [0, 5]
    reasons = [r["reason"] if isinstance(r, dict) else r for r in p.dead_letters.records]
    text = json.dumps(reasons, default=str)
    for part in ("frame shape (10,)", "frame dtype int32", "no frame", "HxWx4"):
        assert part in text
    assert p.metrics.get("infer", "dead_lettered") == 4

    stage, dead = build_stage(Onnx, Onnx.EXAMPLE)
    recs = Onnx.sample_records()[:3] + [{"ts": 9, "tags": {"device": "d0"}, "fields": {"Current": 1.0}}]
    stage.process(Batch.from_records(recs))
    assert "field 'Accelerometer1RMS' is missing" in dead[0][2][0] and "'under_test'" in dead[0][2][0]


# ---------------------------------------------------------------- micro-batching
def test_max_wait_holds_records_until_tick_and_max_batch_splits(tmp_path):
    model = sum_plus(tmp_path / "m.onnx")
    clock = FakeClock(100.0)
    stage, _ = build_stage(Onnx, {"model": str(model), "feeds": {"x": {"source": "fields", "fields": ["a", "b", "c"]}},
                                  "outputs": {"y": {"decode": "regression"}}, "max_batch": 4, "max_wait": "50ms"}, clock=clock)
    calls = []
    stage.wrap_infer(lambda inner: lambda inputs: calls.append(len(inputs["x"])) or inner(inputs))
    recs = [{"ts": i, "fields": {"a": i, "b": 1, "c": 2}} for i in range(6)]
    out = stage.process(Batch.from_records(recs))
    assert len(out) == 4 and calls == [4]
    assert stage.tick(clock()) is None                    # 2 records wait less than max_wait
    clock.advance(0.051)
    late = stage.tick(clock())
    assert late.fields["y"].tolist() == [7.0, 8.0] and calls == [4, 2]


def test_fixed_batch_model_is_padded_and_split(tmp_path):
    fixed = sum_plus(tmp_path / "fixed.onnx", batch=4)
    dyn = sum_plus(tmp_path / "dyn.onnx")
    recs = [{"ts": i, "fields": {"a": i, "b": 2 * i, "c": 1}} for i in range(11)]
    outs = []
    for m in (fixed, dyn):
        p = load_pipeline(pipeline_yaml({"model": str(m), "feeds": {"x": {"source": "fields", "fields": ["a", "b", "c"]}},
                                         "outputs": {"y": {"decode": "regression"}}, "max_batch": 5}))
        outs.append([r["fields"]["y"] for r in p.run_records(recs)["out"]])
    assert outs[0] == outs[1] == [3.0 * i + 1 for i in range(11)]


def test_restart_mid_stream_gives_identical_output(tmp_path):
    model = classifier(tmp_path / "c.onnx", features=2)
    cfg = {"model": str(model), "feeds": {"x": {"source": "window", "length": 3, "key": ["d"], "fields": ["a"], "flatten": False}},
           "outputs": {"probs": {"decode": "label", "labels": ["lo", "mid", "hi"], "field": "cls"}}, "max_batch": 4, "max_wait": 1}
    cfg["feeds"]["x"] = {"source": "window", "length": 1, "key": ["d"], "fields": ["a", "b"]}
    cfg["feeds"]["x"]["flatten"] = True
    rng = np.random.default_rng(3)
    recs = [{"ts": i, "tags": {"d": f"d{i % 2}"}, "fields": {"a": float(rng.normal()), "b": float(rng.normal())}} for i in range(21)]

    def run(split):
        clock = FakeClock()
        stage, _ = build_stage(Onnx, cfg, clock=clock)
        out = [stage.process(Batch.from_records(recs[:split]))]
        if split < len(recs):
            state = stage.snapshot()
            stage, _ = build_stage(Onnx, cfg, clock=clock)
            stage.restore(state)
            out.append(stage.process(Batch.from_records(recs[split:])))
        out.append(stage.flush())
        return Batch.concat(out).to_records()

    assert run(len(recs)) == run(9)


def test_window_state_survives_restart(tmp_path):
    cfg = {"model": str(PUMP), "feeds": {"window": {"source": "window", "length": 60, "key": ["pump"], "fields": SKAB_SENSORS}},
           "outputs": {"probabilities": {"decode": "label", "field": "state"}}}
    recs = skab_records(100)
    whole, _ = build_stage(Onnx, cfg)
    expected = whole.process(Batch.from_records(recs)).to_records()
    first, _ = build_stage(Onnx, cfg)
    a = first.process(Batch.from_records(recs[:70]))
    second, _ = build_stage(Onnx, cfg)
    second.restore(first.snapshot())
    b = second.process(Batch.from_records(recs[70:]))
    assert Batch.concat([a, b]).to_records() == expected


# ---------------------------------------------------------------- vectorised preprocessing == per-frame reference
def test_vectorised_bilinear_resize_matches_opencv():
    cv2 = pytest.importorskip("cv2", reason="opencv-python-headless (dev dependency) is not installed")
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 50, 70, 3), dtype=np.uint8)
    ours = resize_stack(frames, 24, 32, "bilinear")
    ref = np.stack([cv2.resize(f.astype(np.float32), (32, 24), interpolation=cv2.INTER_LINEAR) for f in frames])
    np.testing.assert_allclose(ours, ref, atol=1e-3)


@pytest.mark.parametrize("src,dst", [((576, 768), (96, 128)), ((720, 1280), (96, 128)), ((100, 77), (30, 21)),
                                     ((50, 70), (24, 32)), ((30, 40), (96, 128)), ((40, 30), (45, 31))])
@pytest.mark.parametrize("channels", [None, 3])
def test_area_resize_matches_opencv_inter_area_at_any_factor(src, dst, channels):
    cv2 = pytest.importorskip("cv2", reason="opencv-python-headless (test extra) is not installed")
    rng = np.random.default_rng(0)
    shape = (3, *src) if channels is None else (3, *src, channels)
    frames = rng.integers(0, 256, shape, dtype=np.uint8)
    ours = resize_stack(frames, *dst, "area")
    ref = np.stack([cv2.resize(f.astype(np.float32), dst[::-1], interpolation=cv2.INTER_AREA) for f in frames])
    assert ours.shape == ref.shape and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=1e-3)
    # float frames (0..1) take the same path
    np.testing.assert_allclose(resize_stack(frames / 255.0, *dst, "area"), ref / 255, atol=1e-5)


@pytest.mark.parametrize("color", ["gray", "rgb"])
def test_area_preprocessing_at_non_integer_factors_does_not_depend_on_batching(color):
    # the area mean is a matrix product per frame: a micro-batch of 16 gives each frame's tensor bit for bit as
    # one frame at a time (replays cut batches differently; a reused result must not depend on it)
    rng = np.random.default_rng(4)
    frames = [rng.integers(0, 256, (100, 150, 3), dtype=np.uint8) for _ in range(16)]   # 15,000 px: stacked path
    kw = dict(height=96, width=128, color=color, order="bgr", resize="area", scale=1 / 255, mean=None, std=None,
              layout="NCHW", dtype=np.float32)
    together = frames_to_tensor(frames, **kw)
    alone = np.concatenate([frames_to_tensor([f], **kw) for f in frames])
    assert together.shape == (16, 1 if color == "gray" else 3, 96, 128)
    assert np.array_equal(together, alone)


def test_stage_preprocessing_is_area_at_non_integer_factors():
    cv2 = pytest.importorskip("cv2", reason="opencv-python-headless (test extra) is not installed")
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (480, 854, 3), dtype=np.uint8) for _ in range(2)]     # 480p 16:9 -> 128x96
    x = frames_to_tensor(frames, height=96, width=128, color="gray", order="bgr", resize="area", scale=1 / 255,
                         mean=None, std=None, layout="NCHW", dtype=np.float32)
    gray = [cv2.cvtColor(f, cv2.COLOR_BGR2GRAY).astype(np.float32) for f in frames]
    ref = np.stack([cv2.resize(g, (128, 96), interpolation=cv2.INTER_AREA) for g in gray])[:, None] / 255
    assert np.abs(x - ref).max() < 0.6 / 255       # cv2 rounds the gray conversion to uint8; we keep floats


def test_mixed_frame_sizes_in_one_batch_match_one_by_one():
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, s, dtype=np.uint8) for s in [(60, 80, 3), (30, 40, 3), (60, 80, 3), (48, 64)]]
    kw = dict(height=12, width=16, color="rgb", order="bgr", resize="area", scale=1 / 255, mean=[0.5] * 3, std=[0.25] * 3,
              layout="NHWC", dtype=np.float32)
    together = frames_to_tensor(frames, **kw)
    alone = np.concatenate([frames_to_tensor([f], **kw) for f in frames])
    np.testing.assert_array_equal(together, alone)
    assert together.shape == (4, 12, 16, 3)


@pytest.mark.parametrize("batch_size", [1, 2, 5, 64])
def test_vectorised_windows_match_a_per_record_reference(batch_size):
    from pipeline.inference.inputs import WindowBuilder, WindowInput
    rng = np.random.default_rng(batch_size)
    recs = [{"ts": i, "tags": {"dev": f"d{rng.integers(3)}", "site": f"s{rng.integers(2)}"},
             "fields": {"a": float(rng.normal()), "b": float(rng.normal())}} for i in range(64)]
    builder = WindowBuilder(WindowInput(source="window", fields=["b", "a"], length=4, key=["dev", "site"]), np.float64, "x")
    got = []
    for i in range(0, len(recs), batch_size):
        x, ready = builder.build(Batch.from_records(recs[i:i + batch_size]))
        got += list(x)
    history, expected = {}, []
    for r in recs:  # the obvious per-record version
        h = history.setdefault((r["tags"]["dev"], r["tags"]["site"]), [])
        h.append([r["fields"]["b"], r["fields"]["a"]])
        if len(h) >= 4:
            expected.append(np.array(h[-4:]))
    assert len(got) == len(expected) and all(np.array_equal(g, e) for g, e in zip(got, expected))


def test_nchw_normalisation_is_per_channel_like_nhwc():
    rng = np.random.default_rng(2)
    frames = [rng.integers(0, 256, (24, 32, 3), dtype=np.uint8) for _ in range(3)]
    kw = dict(height=12, width=16, color="rgb", order="bgr", resize="bilinear", scale=1 / 255,
              mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], dtype=np.float32)
    nhwc = frames_to_tensor(frames, layout="NHWC", **kw)
    nchw = frames_to_tensor(frames, layout="NCHW", **kw)
    np.testing.assert_allclose(nchw, nhwc.transpose(0, 3, 1, 2), rtol=1e-6)
    ref = (resize_stack(np.stack(frames), 12, 16, "bilinear")[..., ::-1] / 255 - kw["mean"]) / kw["std"]
    np.testing.assert_allclose(nhwc, ref, rtol=1e-5, atol=1e-5)


def test_missing_providers_fall_back_to_cpu_and_threads_apply(tmp_path, caplog):
    model = sum_plus(tmp_path / "m.onnx")
    with caplog.at_level("INFO", logger="edgesieve.onnx"):
        stage, _ = build_stage(Onnx, {"model": str(model), "feeds": {"x": {"source": "fields", "fields": ["a", "b", "c"]}},
                                      "providers": ["openvino", "cuda", "cpu"], "intra_op_threads": 2})
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert stage._model.providers == ["CPUExecutionProvider"]
        assert "CUDAExecutionProvider" in caplog.text and "not available" in caplog.text
    opts = stage._model.session.get_session_options()
    assert opts.intra_op_num_threads == 2
    assert opts.enable_mem_pattern is False     # batch sizes vary call to call (see pipeline/inference/model.py)
    out = stage.process(Batch.from_records([{"ts": 0, "fields": {"a": 1, "b": 2, "c": 3}}]))
    assert out.extra["y"][0].tolist() == [6.0]          # no `outputs:`: every output raw, named after it


@pytest.mark.parametrize("shape, color", [((240, 320, 3), "rgb"), ((240, 320), "gray"), ((480, 640, 3), "gray")])
def test_large_frames_one_at_a_time_match_the_stacked_path(shape, color):
    rng = np.random.default_rng(5)
    frames = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(3)]
    kw = dict(height=60, width=80, color=color, order="bgr", resize="area", scale=1 / 255, mean=None, std=None,
              layout="NCHW", dtype=np.float32)
    together = frames_to_tensor(frames, **kw)                      # frames >= 64k values: per-frame path
    from pipeline.inference.preprocess import _float_tensor
    stacked = _float_tensor(frames, 60, 80, color, "bgr", "area", 1 / 255, None, None, "NCHW")
    np.testing.assert_allclose(together, stacked, rtol=1e-6)


@pytest.fixture
def model_calls(monkeypatch) -> list[int]:
    """The number of records of every LoadedModel.run call from now on."""
    from pipeline.inference.model import LoadedModel
    calls = []
    run = LoadedModel.run

    def spy(self, feeds):
        calls.append(len(next(iter(feeds.values()))))
        return run(self, feeds)

    monkeypatch.setattr(LoadedModel, "run", spy)
    return calls


@pytest.mark.parametrize("max_batch, warm_up, expected", [(8, True, [8]), (500, True, [64]), (8, False, [])])
def test_model_is_warmed_up_at_load_at_the_largest_batch(model_calls, max_batch, warm_up, expected):
    calls = model_calls
    stage, _ = build_stage(Onnx, camera_stage(max_batch=max_batch, warm_up=warm_up))
    assert calls == expected                    # one call, on zeros of the model's input, before any record
    out = stage.process(Batch.from_records([{"ts": 0, "tags": {"cam": "c"}, "frame": np.zeros((96, 128), np.uint8)}]))
    assert calls == expected + [1] and len(out) == 1


@pytest.mark.parametrize("error, shown", [(RuntimeError("bad zeros"), "bad zeros"), (RuntimeError(), "RuntimeError")])
def test_a_model_that_fails_its_warm_up_still_serves_and_says_so(monkeypatch, caplog, error, shown):
    from pipeline.inference.model import LoadedModel
    run = LoadedModel.run
    state = {"calls": 0}

    def first_fails(self, feeds):
        state["calls"] += 1
        if state["calls"] == 1:
            raise error
        return run(self, feeds)

    monkeypatch.setattr(LoadedModel, "run", first_fails)
    with caplog.at_level("WARNING", logger="edgesieve.onnx"):
        stage, _ = build_stage(Onnx, camera_stage(max_batch=4))
    assert f"warm-up of camera_counter.onnx on 4 zero records failed ({shown})" in caplog.text
    out = stage.process(Batch.from_records([{"ts": 0, "tags": {"cam": "c"}, "frame": np.zeros((96, 128), np.uint8)}]))
    assert np.isfinite(out.fields["people"]).all()


def test_a_fixed_batch_model_is_warmed_up_in_one_call(tmp_path, monkeypatch):
    calls = []
    model = sum_plus(tmp_path / "fixed.onnx", batch=4)
    stage, _ = build_stage(Onnx, {"model": str(model), "feeds": {"x": {"source": "fields", "fields": ["a", "b", "c"]}},
                                  "max_batch": 32})
    sess = stage._model.session
    monkeypatch.setattr(stage._model, "session", type("S", (), {"run": lambda self, names, feeds: (
        calls.append(len(next(iter(feeds.values())))), sess.run(names, feeds))[1]})())
    stage._warm_up(stage._model, stage._builders)
    assert calls == [4]                                  # one chunk of the model's batch, not 8 padded calls


def test_warm_up_of_a_large_input_is_capped_by_bytes(monkeypatch, model_calls):
    """A large image model warms up on as many records as fit in WARM_UP_BYTES of input (at least one)."""
    import pipeline.stages.onnx as onnx_stage
    calls = model_calls
    row = 96 * 128 * 4                                  # the camera model's input: one float32 96x128 frame
    for budget, expected in ((4 * row + 100, 4), (row // 2, 1)):
        monkeypatch.setattr(onnx_stage, "WARM_UP_BYTES", budget)
        calls.clear()
        build_stage(Onnx, camera_stage(max_batch=32))
        assert calls == [expected]
