"""frame_diff -> onnx (camera model, cache: and reuse: options) -> dedup, in one pipeline file."""

import json
from pipeline.statefiles import roundtrip
from pathlib import Path

import numpy as np
import pytest

from pipeline import load_pipeline

MODELS = Path(__file__).resolve().parents[2] / "examples" / "models"
CAMERA = MODELS / "camera_counter.onnx"
pytestmark = pytest.mark.skipif(not CAMERA.exists(), reason=f"{CAMERA} is missing")


def scene(n=40, seed=0):
    """Two cameras, mostly static, a bright 'person' block moving now and then."""
    rng = np.random.default_rng(seed)
    bg = {c: rng.integers(40, 120, (192, 256)).astype(np.uint8) for c in ("c1", "c2")}
    recs = []
    for i in range(n):
        cam = ("c1", "c2")[i % 2]
        f = bg[cam].copy()
        x = 20 + 40 * ((i // 10) % 4)
        f[60:160, x:x + 30] = 230
        recs.append({"ts": 100.0 + i * 0.1, "tags": {"device": cam}, "frame": f})
    return recs


def spec(cache=None, diff=True, dedup=False, audit=0.0):
    stages = []
    src = "cams"
    if diff:
        stages.append({"id": "diff", "type": "frame_diff", "inputs": [src], "threshold": 0.02, "downscale": 4,
                       "audit_rate": audit, "adaptive": audit > 0})
        src = "diff"
    onnx = {"id": "count", "type": "onnx", "inputs": [src], "model": str(CAMERA),
            "feeds": {"frame": {"source": "frame"}},
            "outputs": {"count": {"decode": "regression", "field": "people"}, "occupancy": {"decode": "raw"}},
            "reuse": {"agreement": "count", "confidence": "rounding"}}
    if cache:
        onnx["cache"] = cache
    stages.append(onnx)
    sinks = [{"id": "out", "type": "stdout", "inputs": ["count"]}]
    if dedup:
        stages.append({"id": "changes", "type": "dedup", "inputs": ["count"], "fields": ["people"]})
        sinks.append({"id": "changed", "type": "stdout", "inputs": ["changes"]})
    return json.dumps({"pipeline": "cache-onnx", "sources": [{"id": "cams", "type": "replay", "path": "x.csv"}],
                       "stages": stages, "sinks": sinks}) + "\n"


def test_reused_frames_skip_inference_and_carry_the_last_result():
    recs = scene()
    every = load_pipeline(spec(diff=False)).run_records(recs, batch_size=5)["out"]
    p = load_pipeline(spec())
    out = p.run_records(recs, batch_size=5)["out"]
    assert len(out) == len(every) == 40
    reused = [r for r in out if r["reused"]]
    assert len(reused) >= 25                                   # the block moves every 10 frames only
    assert p.metrics.get("diff", "reused") == len(reused)
    for r, e in zip(out, every):                               # same answers as running the model every time
        assert round(r["fields"]["people"]) == round(e["fields"]["people"])
        assert "occupancy" in r and "model_version" in r["tags"]
        if r["reused"]:
            assert r["fields"]["staleness_frames"] >= 1 and r["fields"]["staleness_s"] > 0


def test_cache_option_exact_hits_across_devices_and_dedup():
    c1 = [r for r in scene(40) if r["tags"]["device"] == "c1"]          # three cameras see the same view
    recs = [{**r, "tags": {"device": f"d{i % 3}"}} for i, r in enumerate(c1)]
    p = load_pipeline(spec(cache={"name": "t-onnx-shared", "approximate": False}, diff=False, dedup=True))
    out = p.run_records(recs, batch_size=4)
    st = p.graph.stages["count"].cache_stats()
    assert st["exact_hits"] + st["batch_hits"] == 16 and st["model_version"].startswith("camera_counter@")
    # the same counts reach the per-stage counters (and so /metrics)
    assert p.metrics.get("count", "cache_exact_hits") + p.metrics.get("count", "cache_batch_hits") == 16
    assert p.metrics.get("count", "cache_misses") == st["misses"] > 0
    assert len(out["out"]) == 20
    assert 0 < len(out["changed"]) < 20 and p.metrics.get("changes", "deduplicated") == 20 - len(out["changed"])


def test_restart_mid_stream_gives_identical_output():
    from pipeline.loader import parse_pipeline
    from pipeline.runtime import Pipeline
    from pipeline.testing import FakeClock

    def build(name):      # a clock that stands still: the cache's max_age (processing time) cannot depend on speed
        return Pipeline(parse_pipeline(spec(cache={"name": name}, audit=0.2), env={}), clock=FakeClock(1000.0))

    recs = scene(40)
    full = build("t-onnx-restart-a").run_records(recs, batch_size=5)["out"]
    a = build("t-onnx-restart-b")
    first = a.run_records(recs[:15], batch_size=5)["out"]
    state = roundtrip(a.graph.snapshot())
    b = build("t-onnx-restart-c")
    b.graph.restore(state)
    rest = b.run_records(recs[15:], batch_size=5)["out"]
    strip = lambda rs: [(r["reused"], r["reuse_reason"], round(r["fields"]["people"], 4)) for r in rs]
    assert strip(first + rest) == strip(full)


def test_cache_ttl_uses_the_pipeline_clock():
    from pipeline.loader import parse_pipeline
    from pipeline.runtime import Pipeline
    from pipeline.testing import FakeClock
    clock = FakeClock(1000.0)
    p = Pipeline(parse_pipeline(spec(cache={"name": "t-onnx-ttl", "approximate": False, "ttl": "5s"}, diff=False),
                                env={}), clock=clock)
    recs = scene(4)
    p.run_records(recs[:1])
    p.run_records(recs[:1])
    cache = p.graph.stages["count"]._infer_fn.cache
    assert cache.stats()["exact_hits"] == 1
    clock.advance(10)
    p.run_records(recs[:1])
    assert cache.stats()["expired"] == 1 and cache.stats()["exact_hits"] == 1


def test_one_frame_batches_give_the_same_records_as_larger_batches():
    """Batches of one frame take the onnx stage's all-reused shortcut (no checks, no preprocessing):
    every record, reused or not, is the same as with batches of five."""
    recs = scene(60)
    five = load_pipeline(spec()).run_records(recs, batch_size=5)["out"]
    p = load_pipeline(spec())
    one = p.run_records(recs, batch_size=1)["out"]
    assert p.metrics.get("diff", "reused") >= 35
    assert len(one) == len(five) == 60
    for a, b in zip(one, five):
        assert a["tags"] == b["tags"] and a["reused"] == b["reused"]
        assert a["fields"] == b["fields"]
        assert np.array_equal(a["occupancy"], b["occupancy"])


def test_partly_reused_batches_run_only_their_computed_rows_with_the_same_records():
    """A partly reused micro-batch that runs at once (no max_wait) builds tensors of its computed rows only; the
    records equal those of the buffered general path (max_wait, same model calls of the same rows)."""
    recs = scene(48)
    direct = load_pipeline(spec())
    fast = direct.run_records(recs, batch_size=8)["out"]
    buffered = json.loads(spec())
    buffered["stages"][1].update(max_wait="10s", max_batch=8)
    slow = load_pipeline(json.dumps(buffered) + "\n").run_records(recs, batch_size=8)["out"]
    assert 10 <= direct.metrics.get("diff", "reused") <= 40          # batches mix reused and computed rows
    assert len(fast) == len(slow) == 48
    for a, b in zip(fast, slow):
        assert a["tags"] == b["tags"] and a["reused"] == b["reused"] and a["fields"] == b["fields"]
        assert np.array_equal(a["occupancy"], b["occupancy"])


def test_two_pipelines_of_the_same_name_in_one_process_audit_their_own_frame_diff():
    # audits go to the frame_diff of the same graph (its `peers`); they once went through a module-level registry
    # keyed by pipeline name and stage id, so the pipeline built last received every other one's audits
    first, second = load_pipeline(spec(audit=0.5)), load_pipeline(spec(audit=0.5))
    out = first.run_records(scene(), batch_size=5)["out"]
    assert sum(r["reuse_reason"] == "audit" for r in out) >= 3
    audits = lambda p: sum(s["audits"] for s in p.graph.stages["diff"].stats().values())  # noqa: E731
    assert audits(first) >= 3
    assert audits(second) == 0


def test_after_a_reload_that_rebuilds_frame_diff_the_kept_onnx_stage_audits_the_new_one(tmp_path):
    from pipeline.reload import reload_graph

    path = tmp_path / "p.yaml"
    path.write_text(spec(audit=0.5))
    p = load_pipeline(path)
    p.run_records(scene(20), batch_size=5)
    kept, old_diff = p.graph.stages["count"], p.graph.stages["diff"]
    path.write_text(spec(audit=0.5).replace('"threshold": 0.02', '"threshold": 0.03'))
    fresh = reload_graph(p, path)
    assert fresh is not None and fresh.stages["count"] is kept and fresh.stages["diff"] is not old_diff
    p.graph = fresh
    before = sum(s["audits"] for s in old_diff.stats().values())
    p.run_records(scene(40, seed=1), batch_size=5)
    assert sum(s["audits"] for s in fresh.stages["diff"].stats().values()) >= 3
    assert sum(s["audits"] for s in old_diff.stats().values()) == before


def test_a_reused_record_alone_gets_what_the_general_path_gives_it():
    """``merge_reused`` of one record (a camera frame by frame: the one-key path) against the path of several keys
    (the same record in a batch with another key): a known key's last result, array values kept whole, and NaN/None for a key that has
    no result yet."""
    from cache.reuse import ReuseTracker
    from pipeline.batch import Batch

    t = ReuseTracker(key=["device"])
    first = Batch.from_records([{"ts": 0.0, "tags": {"device": "c1"}, "reused": False}])
    computed = first.with_fields(people=np.array([2.4])).with_tags(model_version=np.array(["v1"], object))
    occupancy = np.empty(1, object)
    occupancy[0] = np.arange(6.0).reshape(2, 3)
    t.merge(first, np.ones(1, bool), computed.with_extra(occupancy=occupancy))
    for device in ("c1", "c9"):
        one = Batch.from_records([{"ts": 1.0, "tags": {"device": device}, "reused": True, "fields": {"light": 0.5}}])
        two = Batch.from_records([{"ts": 1.0, "tags": {"device": device}, "reused": True, "fields": {"light": 0.5}},
                                  {"ts": 1.0, "tags": {"device": "other"}, "reused": True, "fields": {"light": 0.5}}])
        assert t.compute_mask(one).tolist() == [False]
        fast, general = t.merge_reused(one), t.merge_reused(two).take(np.array([0]))
        for part in ("tags", "fields", "extra"):
            a, b = getattr(fast, part), getattr(general, part)
            assert sorted(a) == sorted(b)
            for name in a:
                assert a[name].dtype == b[name].dtype and len(a[name]) == 1
        assert sorted(fast.fields) == ["light", "people"] and fast.fields["light"][0] == 0.5
        if device == "c1":
            assert fast.fields["people"][0] == general.fields["people"][0] == 2.4
            assert fast.tags["model_version"][0] == general.tags["model_version"][0] == "v1"
            assert np.array_equal(fast.extra["occupancy"][0], general.extra["occupancy"][0])
            assert fast.extra["occupancy"][0].shape == (2, 3)
        else:                                   # no result yet for this key
            assert np.isnan(fast.fields["people"][0]) and np.isnan(general.fields["people"][0])
            assert fast.tags["model_version"][0] is None and general.tags["model_version"][0] is None
            assert fast.extra["occupancy"][0] is None and general.extra["occupancy"][0] is None


def test_a_closed_onnx_stage_gives_its_shared_cache_back():
    from cache import redundancy

    p = load_pipeline(spec(cache={"name": "t-onnx-close"}, diff=False))
    q = load_pipeline(spec(cache={"name": "t-onnx-close"}, diff=False))       # another stage naming the same cache
    cache = p.graph.stages["count"]._infer_fn.cache
    assert q.graph.stages["count"]._infer_fn.cache is cache
    p.graph.close()
    assert cache in redundancy._SHARED.values()                                # q still uses it
    q.graph.close()
    assert cache not in redundancy._SHARED.values()                            # a reload that changed it frees it
