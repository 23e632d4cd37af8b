"""Sub-second windows against an independent computation in whole milliseconds.

Before, the window stage computed starts in float seconds: a hopping window (``size: 1s, hop: 200ms``) came out as
two records whose starts differed by one float step (a sink keyed by window start kept one of them: 239 of 304
windows wrong in VictoriaMetrics), and a 100 ms tumbling window put a reading stamped exactly on its start (whole
milliseconds, as devices send them) in the window before. Found by a field-conditions review.
"""

from __future__ import annotations

import collections

import numpy as np
import pytest
import yaml

from pipeline import load_pipeline

T0_MS = 1_700_000_000_000


def window_pipeline(size: str, hop: str | None, aggregates: dict):
    stage = {"id": "w", "type": "window", "inputs": ["in"], "size": size, "key": ["device"], "aggregates": aggregates}
    if hop:
        stage["hop"] = hop
    return load_pipeline(yaml.safe_dump({
        "pipeline": "subsecond", "sources": [{"id": "in", "type": "replay", "path": "/dev/null", "format": "ndjson"}],
        "stages": [stage], "sinks": [{"id": "out", "type": "stdout", "inputs": ["w"]}]}))


def reference(t_ms, size_ms: int, hop_ms: int) -> collections.Counter:
    """Window j is [j * hop, j * hop + size) in integer milliseconds: readings per window start."""
    out = collections.Counter()
    for t in (T0_MS + t_ms).tolist():
        j = t // hop_ms
        while j * hop_ms + size_ms > t:
            out[j * hop_ms] += 1
            j -= 1
    return out


@pytest.mark.parametrize("size,hop,size_ms,hop_ms", [("1s", "200ms", 1000, 200), ("3s", "300ms", 3000, 300),
                                                     ("1s", "100ms", 1000, 100), ("250ms", None, 250, 250)])
@pytest.mark.parametrize("seed", [1, 2])
def test_each_window_comes_out_once_with_every_reading_in_it(size, hop, size_ms, hop_ms, seed):
    t_ms = np.sort(np.random.default_rng(seed).integers(0, 120_000, 3000))        # 2 minutes, whole milliseconds
    recs = [{"ts": (T0_MS + int(t)) / 1000, "tags": {"device": "pump1"}, "fields": {"v": 1.0}} for t in t_ms]
    out = window_pipeline(size, hop, {"v": ["sum"]}).run_records(recs)["out"]
    starts = collections.Counter(round(r["ts"] * 1000) for r in out)
    assert max(starts.values()) == 1, [ms for ms, n in starts.items() if n > 1][:3]      # one record per window
    assert {round(r["ts"] * 1000): r["fields"]["count"] for r in out} == reference(t_ms, size_ms, hop_ms)
    assert all(r["ts"] == round(r["ts"] * 1000) / 1000 for r in out)     # the start is the float of its decimal


@pytest.mark.parametrize("size", ["100ms", "200ms"])
def test_a_reading_on_a_boundary_is_in_the_window_that_starts_there(size):
    t_ms = np.arange(0, 10_000, 50)                                       # 20 Hz, stamped in whole milliseconds
    recs = [{"ts": (T0_MS + int(t)) / 1000, "tags": {"device": "pump1"}, "fields": {"v": float(t)}} for t in t_ms]
    out = window_pipeline(size, None, {"v": ["min", "max"]}).run_records(recs)["out"]
    assert len(out) == 10_000 // int(size[:-2])
    assert [r["fields"]["v_min"] for r in out] == [round(r["ts"] * 1000) - T0_MS for r in out]


@pytest.mark.parametrize("seed", [3, 4])
def test_killed_and_restarted_from_checkpoints_the_windows_are_the_same(tmp_path, seed):
    """size 1s, hop 200ms, killed at random points and restored from the last checkpoint (its output since then is
    lost, the source resumes at its position): every window once, with every reading (integer-ms reference)."""
    from pipeline.batch import Batch
    from pipeline.checkpoint import CheckpointStore
    from pipeline.stages.window import Window
    from pipeline.testing import build_stage

    rng = np.random.default_rng(seed)
    t_ms = np.sort(rng.integers(0, 60_000, 2000))
    recs = [{"ts": (T0_MS + int(t)) / 1000, "tags": {"device": "pump1"}, "fields": {"v": 1.0}} for t in t_ms]
    options = {"size": "1s", "hop": "200ms", "key": ["device"], "aggregates": {"v": ["sum"]}}
    path = tmp_path / "cp.db"
    store = CheckpointStore(path)
    stage, _ = build_stage(Window, options)
    committed, pending, pos, kills = [], [], 0, 0
    while pos < len(recs):
        step = int(rng.integers(1, 80))
        pending.append(stage.process(Batch.from_records(recs[pos:pos + step])))
        pos = min(pos + step, len(recs))
        u = rng.random()
        if u < 0.3:
            store.save({"src": pos}, {"stage:w": stage.snapshot_changes()})
            stage.state_saved()
            committed += pending
            pending = []
        elif u < 0.4 and path.exists() and (saved := CheckpointStore(path).load()):
            store.close()
            stage, _ = build_stage(Window, options)
            stage.restore_entries(saved.items["stage:w"])
            pos, pending, kills = saved.sources["src"], [], kills + 1
            store = CheckpointStore(path)
    out = Batch.concat(committed + pending + [stage.flush() or Batch.empty()]).to_records()
    assert kills >= 3
    starts = collections.Counter(round(r["ts"] * 1000) for r in out)
    assert max(starts.values()) == 1
    assert {round(r["ts"] * 1000): r["fields"]["count"] for r in out} == reference(t_ms, 1000, 200)


@pytest.mark.parametrize("ts", [-1e13, 1e14, 9.1e9])
def test_a_reading_beyond_the_event_time_range_is_dead_lettered_not_put_in_a_wrong_window(ts):
    """Starts in whole µs overflowed int64 past about 9.2e12 s: such a reading came out in a window that did not
    contain it (found in review). Beyond 2**53 µs (9.0e9 s, the year 2255) it is a dead letter with its reason."""
    from pipeline.stages.window import Window
    from pipeline.testing import build_stage
    from pipeline.batch import Batch
    stage, dead = build_stage(Window, {"size": "10s", "max_future": None, "aggregates": {"v": ["count"]}})
    stage.process(Batch.from_records([{"ts": ts, "tags": {}, "fields": {"v": 1.0}},
                                      {"ts": T0_MS / 1000, "tags": {}, "fields": {"v": 2.0}}]))
    out = (stage.flush() or Batch.empty()).to_records()
    assert [r["ts"] for r in out] == [T0_MS / 1000]
    assert len(dead) == 1 and "event-time range" in str(dead[0][2]) and dead[0][1][0]["ts"] == ts
