"""The window stage judges ``max_future`` at a row's arrival (``Batch.arrival``), not when it processes the row.

A journal replay after a crash hands the same rows on again later: the verdicts must not change with the clock.
"""

import numpy as np

from pipeline.batch import Batch
from pipeline.stages.window import Window
from pipeline.testing import FakeClock, build_stage
from tests.support.windows import check, reference

NOW = 1_767_225_600.0
OPTS = {"size": "10s", "key": ["device"], "aggregates": {"t": ["count", "sum"]}, "allowed_lateness": "30s",
        "max_future": "300s"}
LATER = 86_400.0                   # a replay a day after the readings arrived


def records(seed: int) -> list[dict]:
    """Three devices, one reading a second for two minutes before NOW, and every 17th reading an hour ahead."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(360):
        ts = NOW - 120 + i / 3 + (3600.0 if i % 17 == 5 else 0.0)
        out.append({"ts": ts, "tags": {"device": f"d{i % 3}"}, "fields": {"t": float(rng.normal(20, 3))}})
    return out


def arrived(recs: list[dict], at: float) -> Batch:
    return Batch.from_records(recs).with_arrival(np.full(len(recs), at))


def run(batches, clock, stage_and_dead=None):
    stage, dead = stage_and_dead or build_stage(Window, OPTS, clock=clock)
    out = [stage.process(b) for b in batches]
    return out, stage, dead


def dead_records(dead):
    return [(r["ts"], r["tags"]["device"]) for _, recs, _ in dead for r in recs]


def test_a_reading_refused_as_future_at_arrival_stays_refused_when_processed_later():
    recs = records(1)
    future = [r for r in recs if r["ts"] > NOW + 300]
    on_time = [r for r in recs if r["ts"] <= NOW + 300]
    assert len(future) == 21
    batches = [arrived(recs[i:i + 40], NOW) for i in range(0, len(recs), 40)]
    clock = FakeClock(NOW)
    first, stage, dead = run(batches, clock)
    first.append(stage.flush())
    assert dead_records(dead) == [(r["ts"], r["tags"]["device"]) for r in future]
    check(Batch.concat(first).to_records(), reference(on_time, 10.0, 10.0, ["t"], ["count", "sum"], lateness=30.0))

    late_clock = FakeClock(NOW + LATER)             # the same rows, processed a day later (a journal replay)
    again, stage2, dead2 = run(batches, late_clock)
    again.append(stage2.flush())
    assert dead_records(dead2) == dead_records(dead)
    assert [d[2] for d in dead2] == [d[2] for d in dead]          # "...s ahead of its arrival time": the same
    assert Batch.concat(again).to_records() == Batch.concat(first).to_records()
    assert stage2.ctx.metrics.get("under_test", "future_timestamp") == 21


def test_a_restart_that_replays_later_gives_what_the_run_without_it_gives():
    recs = records(2)
    batches = [arrived(recs[i:i + 25], NOW - 120 + i / 3) for i in range(0, len(recs), 25)]
    clock = FakeClock(NOW)
    whole, stage, dead = run(batches, clock)
    whole.append(stage.flush())

    half = len(batches) // 2
    before, stage1, dead1 = run(batches[:half], FakeClock(NOW))
    saved = stage1.snapshot()
    clock2 = FakeClock(NOW + LATER)
    restarted, dead2 = build_stage(Window, OPTS, clock=clock2)
    restarted.restore(saved)
    after, restarted, dead2 = run(batches[half:], clock2, (restarted, dead2))
    after.append(restarted.flush())
    assert Batch.concat(before + after).to_records() == Batch.concat(whole).to_records()
    assert dead_records(dead1) + dead_records(dead2) == dead_records(dead)
    assert len(dead_records(dead)) == 21


def test_rows_without_an_arrival_time_are_judged_against_the_clock():
    # rows from before arrival was stamped (or built by hand) fall back to the pipeline clock, as before
    recs = [{"ts": NOW + 1000.0, "tags": {"device": "a"}, "fields": {"t": 1.0}}]
    stage, dead = build_stage(Window, OPTS, clock=FakeClock(NOW))
    stage.process(Batch.from_records(recs))
    assert len(dead) == 1
    stage, dead = build_stage(Window, OPTS, clock=FakeClock(NOW + 900))
    stage.process(Batch.from_records(recs))
    assert not dead
    # in a batch merged from stamped and unstamped rows (NaN arrival), each row has its own verdict
    mixed = Batch.concat([arrived(recs, NOW), Batch.from_records(recs)])
    assert np.isnan(mixed.arrival[1]) and mixed.arrival[0] == NOW
    stage, dead = build_stage(Window, OPTS, clock=FakeClock(NOW + 900))
    stage.process(mixed)
    assert len(dead) == 1 and len(dead[0][1]) == 1


def test_arrival_follows_its_rows_and_is_not_part_of_the_record():
    b = arrived([{"ts": float(i), "fields": {"t": float(i)}} for i in range(5)], NOW)
    b = b.with_arrival(NOW + np.arange(5.0))
    assert b.take(np.array([4, 1])).arrival.tolist() == [NOW + 4, NOW + 1]
    assert b.with_fields(u=np.zeros(5)).with_tags(d=np.full(5, "x", dtype=object)).arrival.tolist() == b.arrival.tolist()
    assert b.with_ts(b.ts + 1).with_extra(e=np.full(5, None, dtype=object)).arrival.tolist() == b.arrival.tolist()
    assert all("arrival" not in r for r in b.to_records())
    assert Batch.concat([Batch.from_records([{"ts": 0.0}]), Batch.from_records([{"ts": 1.0}])]).arrival is None


def test_a_micro_batch_saved_before_arrival_existed_loads_without_one():
    # the onnx stage checkpoints pending batches; one saved by an older version has no `arrival` attribute
    from pipeline.statecodec import dumps, loads

    old = object.__new__(Batch)
    old.__dict__.update({"ts": np.array([NOW + 1000.0]), "tags": {"device": np.array(["a"], dtype=object)},
                         "fields": {"t": np.array([1.0])}, "frames": None, "extra": {}})
    back = loads(dumps(old))
    assert back.arrival is None and back.arrival_or(NOW).tolist() == [NOW]
    stage, dead = build_stage(Window, OPTS, clock=FakeClock(NOW))
    stage.process(Batch.concat([back, arrived([{"ts": NOW, "tags": {"device": "a"}, "fields": {"t": 2.0}}], NOW)]))
    assert len(dead) == 1 and dead[0][1][0]["fields"] == {"t": 1.0}
    assert loads(dumps(arrived([{"ts": 1.0}], NOW))).arrival.tolist() == [NOW]


def test_a_restart_with_the_clock_behind_the_journaled_arrivals_does_not_emit_a_window_twice():
    """A gateway whose clock comes back behind (no battery-backed clock, before NTP): the checkpoint's key
    clocks were judged at arrival and are ahead of the restart's clock. Pulling them back would let a reading
    that was late in the uninterrupted run reopen a window already emitted (found by review)."""
    opts = {"size": "10s", "key": ["device"], "aggregates": {"t": ["count"]}, "max_future": "300s"}

    def rec(ts):
        return {"ts": NOW + ts, "tags": {"device": "a"}, "fields": {"t": 1.0}}

    part1 = [arrived([rec(0), rec(5), rec(25)], NOW + 25)]   # window [0, 10) closes (the watermark passes 10)
    part2 = [arrived([rec(3)], NOW + 26), arrived([rec(40)], NOW + 40)]  # after the checkpoint: a late reading

    def windows(restart_clock, incremental):
        stage, _ = build_stage(Window, opts, clock=FakeClock(NOW + 30))
        out = [stage.process(b) for b in part1]
        if restart_clock is not None:
            saved = dict(stage.snapshot_changes().entries) if incremental else stage.snapshot()
            stage, _ = build_stage(Window, opts, clock=FakeClock(restart_clock))
            (stage.restore_entries if incremental else stage.restore)(saved)
        out += [stage.process(b) for b in part2] + [stage.flush()]
        return [(r["ts"] - NOW, r["fields"]["count"]) for r in Batch.concat([o for o in out if o is not None]).to_records()]

    want = windows(None, False)
    assert want == [(0.0, 2), (20.0, 1), (40.0, 1)]  # the late reading at 3 is dropped
    for clock in (NOW - 86_400.0, NOW + 86_400.0):
        for incremental in (False, True):
            assert windows(clock, incremental) == want


def test_arrival_times_must_be_one_per_row():
    b = Batch.from_records(records(2)[:5])
    with np.testing.assert_raises(ValueError):
        b.with_arrival(np.array([NOW]))  # a single value would broadcast over the rows silently
    assert len(b.with_arrival(np.full(5, NOW)).arrival) == 5
