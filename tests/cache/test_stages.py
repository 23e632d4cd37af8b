"""frame_diff, deadband and dedup as pipeline stages: behaviour, dead letters, restarts, pipeline files."""

import numpy as np
import pytest

from cache.frame_diff import FrameDiff
from cache.deadband import DeadbandStage
from cache.dedup import Dedup
from cache.reuse import ReuseTracker, count_agreement
from pipeline.loader import parse_pipeline
from pipeline.runtime import Pipeline
from pipeline.batch import Batch
from pipeline.statefiles import roundtrip
from pipeline.testing import build_stage, run_stage


def camera_records(n=40, cams=("cam1", "cam2"), seed=0):
    rng = np.random.default_rng(seed)
    base = {c: rng.integers(30, 220, (48, 64)).astype(np.uint8) for c in cams}
    recs = []
    for i in range(n):
        c = cams[i % len(cams)]
        if i % 9 == 8:                                    # a person walks in and stays
            f = base[c].copy()
            f[10:40, (i * 3) % 40:(i * 3) % 40 + 20] = 250
            base[c] = f
        noise = rng.integers(-3, 4, (48, 64))
        recs.append({"ts": 1000.0 + i * 0.1, "tags": {"device": c},
                     "frame": np.clip(base[c] + noise, 0, 255).astype(np.uint8)})
    return recs


def test_frame_diff_marks_static_frames_reused_with_staleness():
    out = run_stage(FrameDiff, {"threshold": 0.02, "downscale": 4, "audit_rate": 0}, camera_records(), batch_size=7)
    reasons = [r["reuse_reason"] for r in out]
    assert reasons[:2] == ["first", "first"] and reasons.count("changed") == 4
    assert all(r["reused"] == (r["reuse_reason"] == "reuse") for r in out)
    cam1 = [r for r in out if r["tags"]["device"] == "cam1"]
    assert [r["fields"]["staleness_frames"] for r in cam1[:4]] == [0.0, 1.0, 2.0, 3.0]
    assert cam1[3]["fields"]["staleness_s"] == pytest.approx(0.6)
    assert all("frame" in r for r in out)                 # frames pass through untouched


def test_frame_diff_forced_refresh_and_stats():
    stage, _ = build_stage(FrameDiff, {"threshold": 0.5, "downscale": 4, "audit_rate": 0, "refresh_frames": 5})
    recs = camera_records(30, cams=("cam1",))
    out = stage.process(Batch.from_records(recs)).to_records()
    assert [i for i, r in enumerate(out) if not r["reused"]] == [0, 5, 10, 15, 20, 25]
    st = stage.stats()["cam1"]
    assert st["frames"] == 30 and st["forced"] == 5 and st["skip_rate"] == pytest.approx(24 / 30)
    assert stage.ctx.metrics.get("under_test", "forced") == 5


def test_frame_diff_dead_letters_missing_and_wrong_shaped_frames():
    stage, dead = build_stage(FrameDiff, {"downscale": 4})
    recs = camera_records(4, cams=("cam1",))
    recs.insert(2, {"ts": 1.0, "tags": {"device": "cam1"}, "frame": np.zeros((24, 32), np.uint8)})
    recs.insert(3, {"ts": 1.0, "tags": {"device": "cam1"}, "fields": {"x": 1.0}})
    out = stage.process(Batch.from_records(recs)).to_records()
    assert len(out) == 4
    reasons = dead[0][2]
    assert len(dead[0][1]) == 2 and "no frame" in reasons[1] and "differs" in reasons[0]
    assert "under_test" in reasons[0] and "cam1" in reasons[0]


def test_frame_diff_vector_fields():
    recs = [{"ts": i, "tags": {"device": "m"}, "fields": {"a": 1.0, "b": 2.0 + (0.5 if i >= 3 else 0.0)}}
            for i in range(5)]
    out = run_stage(FrameDiff, {"feature": "vector_norm", "vector_fields": ["a", "b"], "threshold": 0.1,
                                "audit_rate": 0}, recs)
    assert [r["reused"] for r in out] == [False, True, True, False, True]
    with pytest.raises(Exception, match="vector_norm"):
        FrameDiff.Config.model_validate({"id": "x", "type": "frame_diff", "inputs": ["i"], "vector_fields": ["a"]})


def test_frame_diff_restart_mid_stream_gives_identical_output():
    recs = camera_records(60)
    opts = {"threshold": 0.02, "downscale": 4, "audit_rate": 0.3, "adaptive": True}
    a, _ = build_stage(FrameDiff, opts)
    full = [a.process(Batch.from_records(recs[i:i + 8])) for i in range(0, 60, 8)]
    b, _ = build_stage(FrameDiff, opts)
    first = [b.process(Batch.from_records(recs[i:i + 8])) for i in range(0, 24, 8)]
    c, _ = build_stage(FrameDiff, opts)
    c.restore(roundtrip(b.snapshot()))
    rest = [c.process(Batch.from_records(recs[i:i + 8])) for i in range(24, 60, 8)]
    strip = lambda bs: [(r["reused"], r["reuse_reason"], r["fields"]) for r in Batch.concat(bs).to_records()]
    assert strip(first + rest) == strip(full)


def test_reuse_tracker_attaches_last_result_and_reports_audits():
    """frame_diff -> a counting 'model' wrapped by ReuseTracker: audits reach frame_diff and tighten it."""
    fd, _ = build_stage(FrameDiff, {"threshold": 0.3, "downscale": 2, "audit_rate": 0.3, "adaptive": True,
                                    "seed": 2}, item_id="fd")
    tracker = ReuseTracker(["device"], ["count"], peers=fd.ctx.peers, agreement=count_agreement)
    outs = []
    for i in range(0, 120, 10):                   # a bar grows a row per frame: the count drifts slowly
        frames = []
        for j in range(i, i + 10):
            f = np.zeros((64, 64), np.uint8)
            f[: (j % 60) + 1] = 255
            frames.append({"ts": float(j), "tags": {"device": "cam"}, "frame": f})
        marked = fd.process(Batch.from_records(frames))
        mask = tracker.compute_mask(marked)
        part = marked.take(mask)
        counts = np.array([float((fr > 0).sum() // 256) for fr in part.frames])
        outs.append(tracker.merge(marked, mask, part.with_fields(count=counts)))
    out = Batch.concat(outs).to_records()
    assert all("count" in r["fields"] for r in out)
    reused = [r for r in out if r["reused"]]
    assert reused and all(r["fields"]["staleness_frames"] >= 1 for r in reused)
    st = fd.stats()["cam"]
    assert st["audits"] >= 3 and st["tightened"] >= 1 and st["threshold"] < 0.3


def test_deadband_stage_counts_and_dead_letters():
    recs = [{"ts": float(i), "tags": {"device": "p"}, "fields": {"t": 20.0 + 0.1 * i}} for i in range(20)]
    recs[5]["fields"]["t"] = "broken"
    stage, dead = build_stage(DeadbandStage, {"fields": ["t"], "deviation": 0.45, "max_interval": "8s"})
    out = stage.process(Batch.from_records(recs)).to_records()
    assert [r["ts"] for r in out] == [0.0, 6.0, 11.0, 16.0]
    assert "broken" in dead[0][2][0] and stage.ctx.metrics.get("under_test", "suppressed") == 15
    with pytest.raises(Exception, match="at least one"):
        DeadbandStage.Config.model_validate({"id": "d", "type": "deadband", "inputs": ["i"], "fields": ["t"]})


def test_dedup_window_reemits_steady_results():
    recs = [{"ts": float(i), "tags": {"device": "cam", "label": "empty"}, "fields": {"count": 0.0}} for i in range(10)]
    recs[6]["tags"]["label"] = "busy"
    out = run_stage(Dedup, {"fields": ["count"], "tags": ["label"], "window": "4s"}, recs, batch_size=3)
    assert [(r["ts"], r["fields"]["repeats"]) for r in out] == [(0.0, 0.0), (4.0, 3.0), (6.0, 1.0), (7.0, 0.0)]


PIPELINE = """\
pipeline: cache-test
sources:
  - {id: cams, type: replay, path: none.csv}
stages:
  - {id: diff, type: frame_diff, inputs: [cams], threshold: 0.02, downscale: 4, audit_rate: 0}
  - {id: band, type: deadband, inputs: [diff], fields: [staleness_frames], deviation: 2.5}
sinks:
  - {id: marked, type: file, inputs: [diff], path: out/marked.ndjson}
  - {id: banded, type: file, inputs: [band], path: out/banded.ndjson}
"""


def test_stages_in_a_pipeline_file():
    spec = parse_pipeline(PIPELINE, env={})
    pipe = Pipeline(spec)
    out = pipe.run_records(camera_records(30), batch_size=6)
    assert len(out["marked"]) == 30 and sum(r["reused"] for r in out["marked"]) > 15
    assert 0 < len(out["banded"]) < 30


def test_dedup_tells_apart_tag_values_whose_crc32_collide():
    from pipeline.testing import run_stage
    from cache.dedup import Dedup
    assert __import__("zlib").crc32(b"plumless") == __import__("zlib").crc32(b"buckeroo")
    out = run_stage(Dedup, {"tags": ["label"], "fields": []}, [
        {"ts": 1.0, "tags": {"device": "c", "label": "plumless"}, "fields": {}},
        {"ts": 2.0, "tags": {"device": "c", "label": "buckeroo"}, "fields": {}},
    ])
    assert [r["tags"]["label"] for r in out] == ["plumless", "buckeroo"]


@pytest.mark.parametrize("cls,options", [(DeadbandStage, {"fields": ["t"], "deviation": 0.5}),
                                         (Dedup, {"fields": ["t"], "tags": ["state"]})])
def test_checkpoints_hold_only_the_keys_that_saw_readings_and_restore_from_them(cls, options):
    rng = np.random.default_rng(4)
    recs = [{"ts": float(i), "tags": {"device": f"d{i % 500 if i < 1500 else i % 7}", "state": f"s{i % 3}"},
             "fields": {"t": float(np.round(rng.normal(20, 1)))}} for i in range(3000)]
    whole, _ = build_stage(cls, options)
    expected = whole.process(Batch.from_records(recs)).to_records()
    stage, _ = build_stage(cls, options)
    saved, rows = {}, []
    out = []
    for a in range(0, 2500, 500):
        out += stage.process(Batch.from_records(recs[a:a + 500])).to_records()
        changes = stage.snapshot_changes()
        rows.append(len(changes.entries))
        saved.update({k: roundtrip(v) for k, v in changes.entries.items()})
        stage.state_saved()
    assert rows[0] >= 500 and rows[-1] <= 8  # late checkpoints: 7 active devices (and the tag codes once)
    restarted, _ = build_stage(cls, options)
    restarted.restore_entries(saved)
    out += restarted.process(Batch.from_records(recs[2500:])).to_records()
    assert out == expected


def test_frame_diff_one_record_batches_give_the_records_of_larger_batches():
    cfg = {"threshold": 0.02, "downscale": 4, "audit_rate": 0.2, "refresh_frames": 6}
    recs = camera_records(60)
    ones, sevens = run_stage(FrameDiff, cfg, recs, batch_size=1), run_stage(FrameDiff, cfg, recs, batch_size=7)
    assert len(ones) == len(sevens) == 60
    for a, b in zip(ones, sevens):
        assert a["fields"] == b["fields"] and a["tags"] == b["tags"] and a["frame"] is b["frame"]
        assert (a["reused"], a["reuse_reason"], a["diff_by"]) == (b["reused"], b["reuse_reason"], b["diff_by"])
        assert type(a["reused"]) is bool
    assert {r["reuse_reason"] for r in ones} >= {"first", "reuse", "changed", "forced", "audit"}
    stage1, _ = build_stage(FrameDiff, cfg)
    stage7, _ = build_stage(FrameDiff, cfg)
    for i in range(60):
        stage1.process(Batch.from_records(recs[i:i + 1]))
    for i in range(0, 60, 7):
        stage7.process(Batch.from_records(recs[i:i + 7]))
    assert stage1.stats() == stage7.stats()
    assert stage1.ctx.metrics.by_item() == stage7.ctx.metrics.by_item()


def test_frame_diff_keeps_the_arrival_column_in_one_record_and_larger_batches():
    stage, _ = build_stage(FrameDiff, {"threshold": 0.02, "downscale": 4, "audit_rate": 0})
    recs = camera_records(6, cams=("cam1",))
    for i in range(0, 6, 3):                              # a batch of three, then batches of one (the scalar path)
        b = Batch.from_records(recs[i:i + 3]) if i == 0 else None
        batches = [b] if b is not None else [Batch.from_records(recs[j:j + 1]) for j in range(i, i + 3)]
        for b in batches:
            arrival = 5000.0 + b.ts
            out = stage.process(b.with_arrival(arrival))
            assert np.array_equal(out.arrival, arrival)
