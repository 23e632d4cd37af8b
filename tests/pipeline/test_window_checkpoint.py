"""The window stage's incremental checkpoints: crashes at random points, failed saves and old whole-state
checkpoints give exactly the windows an uninterrupted run gives (and an independent computation), while a
checkpoint writes only what arrived or closed since the previous one."""

import numpy as np
import pytest

from pipeline.batch import Batch
from pipeline.checkpoint import CheckpointStore
from pipeline.stage import WHOLE, StateChanges
from pipeline.stages.window import Window
from pipeline.testing import build_stage, run_stage
from tests.support.windows import check, reference

AGG = ["count", "mean", "p95", "last"]


def records(n, devices, seed, span=600.0, jitter=3.0):
    rng = np.random.default_rng(seed)
    ts = 1_700_000_000 + np.sort(rng.uniform(0, span, n)) - rng.uniform(0, jitter, n)
    return [{"ts": float(ts[i]), "tags": {"device": f"d{rng.integers(devices)}"},
             "fields": {"t": float(rng.normal(20, 3))}} for i in range(n)]


def opts(hop, watermark):
    o = {"size": "30s", "key": ["device"], "aggregates": {"t": AGG}, "allowed_lateness": "2s", "watermark": watermark}
    return {**o, "hop": hop} if hop else o


def save(store, stage, position):
    return store.save({"src": position}, {"stage:w": stage.snapshot_changes()})


def restart(path, options):
    """A new stage from the checkpoint on disk, and the source position it resumes from."""
    saved = CheckpointStore(path).load()
    stage, _ = build_stage(Window, options)
    stage.restore_entries(saved.items["stage:w"])
    return stage, saved.sources["src"], saved


@pytest.mark.parametrize("hop,watermark,seed", [(None, "per_key", 1), (10.0, "per_key", 2), (None, "global", 3),
                                                (7.5, "global", 4)])
def test_crashes_and_failed_saves_give_the_uninterrupted_windows(tmp_path, hop, watermark, seed):
    recs = records(3000, devices=300, seed=seed)         # > 256 devices: more than one key block
    options = opts(hop, watermark)
    whole = run_stage(Window, options, recs, batch_size=50)
    rng = np.random.default_rng(seed)
    path = tmp_path / "cp.db"
    store = CheckpointStore(path)
    stage, _ = build_stage(Window, options)
    committed, pending, pos, crashes, failed = [], [], 0, 0, 0
    while pos < len(recs):
        step = int(rng.integers(1, 60))
        out = stage.process(Batch.from_records(recs[pos:pos + step]))
        pos = min(pos + step, len(recs))
        pending.append(out)
        u = rng.random()
        if u < 0.25:                                     # a checkpoint: the output so far is delivered with it
            save(store, stage, pos)
            stage.state_saved()
            committed += pending
            pending = []
        elif u < 0.37:                                   # a save that failed (disk full): nothing marked saved
            stage.snapshot_changes()
            failed += 1
        elif u < 0.44:                                   # killed: what it emitted since the checkpoint is lost
            store.close()
            stage, pos, _ = restart(path, options) if path.exists() and CheckpointStore(path).load() else \
                (build_stage(Window, options)[0], 0, None)
            store = CheckpointStore(path)
            pending = []
            crashes += 1
    committed += pending + [stage.flush() or Batch.empty()]
    got = Batch.concat(committed).to_records()
    assert crashes >= 3 and failed >= 2
    assert sorted(got, key=lambda r: (r["ts"], r["tags"]["device"])) == \
        sorted(whole, key=lambda r: (r["ts"], r["tags"]["device"]))
    check(got, reference(recs, 30.0, hop or 30.0, ["t"], AGG, lateness=2.0, per_key=watermark == "per_key"))


def test_a_checkpoint_writes_what_arrived_not_every_buffered_reading(tmp_path):
    options = {"size": "1h", "key": ["device"], "aggregates": {"t": ["mean", "p95"]}}
    recs = records(20_000, devices=500, seed=9, span=1200.0, jitter=0.0)    # all in one open hour
    store = CheckpointStore(tmp_path / "cp.db")
    stage, _ = build_stage(Window, options)
    stage.process(Batch.from_records(recs[:19_800]))
    first = save(store, stage, 1)
    stage.state_saved()
    stage.process(Batch.from_records(recs[19_800:]))
    second = save(store, stage, 2)
    stage.state_saved()
    third = save(store, stage, 3)                          # nothing new: the clocks and counters only
    stage.state_saved()
    assert second.bytes * 20 < first.bytes and third.bytes * 20 < first.bytes
    assert not stage.flush() is None
    saved = CheckpointStore(tmp_path / "cp.db").load()
    again, _ = build_stage(Window, options)
    again.restore_entries(saved.items["stage:w"])
    fresh, _ = build_stage(Window, options)
    fresh.process(Batch.from_records(recs))
    assert again.flush().to_records() == fresh.flush().to_records()


def test_closed_windows_leave_the_checkpoint(tmp_path):
    options = {"size": "10s", "key": ["device"], "aggregates": {"t": ["count"]}}
    recs = records(2000, devices=20, seed=5, span=300.0, jitter=0.0)
    store = CheckpointStore(tmp_path / "cp.db")
    stage, _ = build_stage(Window, options)
    for i in range(0, len(recs), 100):
        stage.process(Batch.from_records(recs[i:i + 100]))
        save(store, stage, i)
        stage.state_saved()
    saved = CheckpointStore(tmp_path / "cp.db").load().items["stage:w"]
    starts = {k[1] for k in saved if k[0] == "rows"}
    assert starts and max(starts) - min(starts) <= 10.0       # only the windows still open: no closed ones linger
    rows = sum(len(v["start"]) for k, v in saved.items() if k[0] == "rows")
    assert rows == stage.open.rows


def test_an_old_whole_state_checkpoint_restores_and_is_replaced(tmp_path):
    options = opts(None, "per_key")
    recs = records(1500, devices=10, seed=6)
    whole = run_stage(Window, options, recs, batch_size=100)
    first, _ = build_stage(Window, options)
    out = [first.process(Batch.from_records(recs[i:i + 100])) for i in range(0, 800, 100)]
    state = first.snapshot()
    state["pending"].pop("gen")                              # as the previous version wrote it
    store = CheckpointStore(tmp_path / "cp.db")
    store.save({"src": 800}, {"stage:w": StateChanges({WHOLE: state}, complete=True)})
    second, pos, _ = restart(tmp_path / "cp.db", options)
    out += [second.process(Batch.from_records(recs[i:i + 100])) for i in range(pos, 1200, 100)]
    save(store, second, 1200)
    second.state_saved()
    items = CheckpointStore(tmp_path / "cp.db").load().items["stage:w"]
    assert WHOLE not in items and ("meta",) in items
    third, pos, _ = restart(tmp_path / "cp.db", options)
    out += [third.process(Batch.from_records(recs[i:i + 100])) for i in range(pos, len(recs), 100)]
    out.append(third.flush())
    assert Batch.concat(out).to_records() == whole


def test_a_damaged_key_list_is_refused_with_the_stage():
    stage, _ = build_stage(Window, opts(None, "per_key"))
    stage.process(Batch.from_records(records(50, devices=5, seed=1)))
    entries = dict(stage.snapshot_changes().entries)
    del entries[("keys", 0)]
    again, _ = build_stage(Window, opts(None, "per_key"))
    with pytest.raises(ValueError, match="stage 'under_test'.*0 of 5 keys"):
        again.restore_entries(entries)
