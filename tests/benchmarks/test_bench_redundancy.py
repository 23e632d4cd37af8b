"""The redundancy benchmark's floor (onnx on the batches frame_diff handed to onnx in an untimed frame_diff -> onnx
run) does the same work as frame_diff -> onnx minus frame_diff: the same frames computed, the same answers."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_redundancy as br  # noqa: E402

MODEL = ROOT / "examples/models/camera_counter.onnx"


def _frames(n: int = 48) -> np.ndarray:
    """A still scene with a bright bar that grows 3 px a frame (distances to the reference grow gradually, so the
    onnx stage's confidences fed back to frame_diff change which frames are processed), sensor noise (seeded)."""
    rng = np.random.default_rng(3)
    base = rng.integers(40, 200, (96, 128, 3), dtype=np.uint8)
    out = np.empty((n,) + base.shape, np.uint8)
    for i in range(n):
        f = base.copy()
        f[30:70, 0:3 * i] = 250
        out[i] = np.clip(f + rng.normal(0, 2, f.shape), 0, 255).astype(np.uint8)
    return out


@pytest.mark.parametrize("batch", [1, 5])
def test_floor_computes_the_frames_frame_diff_marks(batch):
    frames = _frames()
    diff = dict(br.BASE, threshold=0.15, audit_rate=0.0)   # confidence_power 1 (BASE)
    marked = br.marked(MODEL, frames, diff, batch, 0)
    reused = sum(int(np.count_nonzero(b.extra["reused"] == True)) for b in marked)   # noqa: E712
    assert 0 < reused < len(frames)

    both = br.pipeline(MODEL, diff)
    got_both = both.run_records(br.records(frames), batch_size=batch)["out"]
    assert both.metrics.get("diff", "reused") == reused

    floor = br.pipeline(MODEL, None)
    out = []
    floor.graph.deliver = lambda sink, b: out.extend(b.to_records())
    for b in marked:
        floor.graph.push("cams", b)
    floor.graph.flush()
    assert [r["reuse_reason"] for r in out] == [r["reuse_reason"] for r in got_both]
    assert [r["fields"]["people"] for r in out] == [r["fields"]["people"] for r in got_both]


def test_speed_reports_the_floor_and_what_frame_diff_adds():
    s = br.speed(MODEL, _frames(32), dict(threshold=0.15), batch=4, repeats=1, t0=0)
    assert s["us_floor"] > 0 and s["floor_speedup"] > 0
    assert s["added_share"] == pytest.approx((s["us_both"] - s["us_floor"]) / (s["skip"] * s["us_onnx"]))


def test_reuse_cost_split_times_every_part_of_both_pipelines():
    import bench_onnx_reuse_cost as rc

    frames = _frames(32)
    setting = dict(threshold=0.15)
    r = rc.split(MODEL, frames, setting, batch=4, repeats=1, t0=0)
    marked = br.marked(MODEL, frames, dict(br.BASE, **setting, audit_rate=0.0), 4, 0)
    computed = sum(int(np.count_nonzero(b.extra["reused"] != True)) for b in marked)   # noqa: E712
    assert r["computed"] == pytest.approx(computed / len(frames)) and 0 < computed < len(frames)
    for name in ("onnx", "floor"):
        us = r[name]
        assert us["preprocessing"] > 0 and us["model"] > 0 and us["decode"] > 0
        assert us["rest"] >= 0 and us["total"] == pytest.approx(sum(us[p] for p in rc.PARTS) + us["rest"])
    assert r["floor"]["reuse"] > 0                           # the ReuseTracker fills the reused records


def test_eval_guard_rows_and_clips():
    import eval_guard as eg

    got = eg.rows(MODEL, _frames(48))
    assert [(r["metric"], r["target"]) for r in got] == [(m, t) for m, ts in br.TARGETS.items() for t in ts]
    for r in got:
        assert 0 <= r["skip"] <= 1 and 0 <= r[r["metric"]] <= 1 and 0 <= r["every_nth"] <= 1
        assert sum(n for n, _ in r["by_staleness"].values()) == round(r["skip"] * 24)   # every reused frame, once
    video = np.zeros((6, 576, 768, 3), np.uint8)
    video[:, 0, 0, 0] = np.arange(6)                     # frame numbers, to see the order
    name, clip = next(eg.clips(video, "held-out"))
    assert name == "vtest, reversed" and clip[:, 0, 0, 0].tolist() == [5, 4, 3, 2, 1, 0]
    name, clip = next(eg.clips(video, "development"))
    assert name == "vtest" and clip[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 4, 5]


def test_synthetic_walkers_are_the_same_clip_for_a_seed_and_have_people_moving():
    """eval_guard's held-out-4 must be the same footage on every machine: a seed gives the same frames."""
    pytest.importorskip("cv2", reason="opencv-python-headless (test extra) is not installed")
    from redundancy_scenes import decode, walkers
    from tests.support.onnx_models import SHARED

    video = SHARED / "video" / "vtest.avi"
    if not video.exists():
        pytest.skip(f"{video} is missing (shared data set)")
    frames = decode(video, 120)
    a, b, c = walkers(frames, 201, n=60), walkers(frames, 201, n=60), walkers(frames, 202, n=60)
    assert a.shape == (60, 288, 384) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.abs(np.diff(a.astype(np.int16), axis=0)).mean() > 1          # sensor noise at least, frame to frame
    assert (np.abs(a[-1].astype(np.int16) - a[0]) > 40).sum() > 200        # someone walked in or moved


def _still(n: int, seed: int) -> np.ndarray:
    """A still scene with sensor noise only (seeded): every frame near the first, none the same bytes."""
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 200, (96, 128, 3)).astype(np.float32)
    return np.stack([np.clip(base + rng.normal(0, 2, base.shape), 0, 255).astype(np.uint8) for _ in range(n)])


def test_eval_cache_counts_every_frame_once_and_scores_against_the_stage_without_cache():
    import eval_cache as ec

    cams = [_still(40, 1), _frames(40)]
    r = ec.evaluate(MODEL, cams)
    assert r["frames"] == 80 and 0 < r["approx"] <= r["reused"] <= 1
    # the same frames through the stage without a cache, then the cached stage played tick by tick: the metrics are
    # of the cached answers against these (an independent run, one camera at a time)
    ref = [np.array([x["fields"]["people"] for x in ec.stage(MODEL, None).run_records(ec.site_records([c]))["out"]])
           for c in cams]
    clock = ec.RecordClock()
    p = ec.stage(MODEL, ec.CACHE, clock)
    got = ec.per_camera(ec.played(p, clock, ec.site_records(cams), 2), 2)
    assert [len(g) for g in got] == [40, 40]
    assert r["strict"] == pytest.approx(np.mean(np.round(np.concatenate(got)) == np.round(np.concatenate(ref))))


def test_onnx_cache_max_age_forces_a_computation_within_that_time_of_the_record_clock():
    """The pipeline clock follows the records (eval_cache.RecordClock): with ``max_age: 0.5`` at 10 frames/s a still
    camera is computed about every 6th frame (neither more often, nor less); without it, almost never after the first
    frames."""
    import eval_cache as ec

    frames = _still(300, 2)                    # 30 s
    computed = {}
    for age in (None, 0.5):
        clock = ec.RecordClock()
        p = ec.stage(MODEL, dict(ec.CACHE, audit_rate=0.0, max_age=age), clock)
        at = []
        for i, rec in enumerate(ec.site_records([frames])):
            before = p.graph.stages["count"].cache_stats()["misses"]
            ec.played(p, clock, [rec], 1)
            if p.graph.stages["count"].cache_stats()["misses"] > before:
                at.append(i)
        computed[age] = at
    assert len(computed[None]) <= 3
    assert max(np.diff([0] + computed[0.5] + [300])) <= 6
    assert len(computed[0.5]) <= 300 / 5 + 3                     # not more often: the renewed neighbours serve again
