"""Event time per key in the window stage: devices with disagreeing clocks, backlogs, far-future readings,
idle keys, the open-window bound, restarts and batching, each against an independent computation."""

import logging

import numpy as np
import pytest

from pipeline.batch import Batch
from pipeline.keys import RunningMax
from pipeline.stages.window import Window
from pipeline.testing import FakeClock, build_stage
from tests.support.windows import check, plain_copy, reference

NOW = 1_767_225_600.0                      # the pipeline clock in these tests
AGG = {"t": ["count", "sum", "max", "last"]}


def readings(device, t0, seconds, hz, seed):
    rng = np.random.default_rng(seed)
    ts = t0 + np.arange(int(seconds * hz)) / hz
    return [{"ts": float(t), "tags": {"device": device}, "fields": {"t": float(v)}}
            for t, v in zip(ts, rng.normal(20, 3, len(ts)))]


def run(records, opts, batch_size=100, clock=None):
    stage, dead = build_stage(Window, opts, clock=clock or FakeClock(NOW))
    out = [stage.process(Batch.from_records(records[i:i + batch_size])) for i in range(0, len(records), batch_size)]
    out.append(stage.flush() or Batch.empty())
    return Batch.concat(out).to_records(), stage, dead


def counter(stage, name):
    return stage.ctx.metrics.get("under_test", name)


def interleaved(streams):
    """Readings of several devices merged in arrival order (each device's own order kept)."""
    rng = np.random.default_rng(11)
    owner = rng.permutation(np.repeat(np.arange(len(streams)), [len(s) for s in streams]))
    its = [iter(s) for s in streams]
    return [next(its[k]) for k in owner]


# ---------------------------------------------------------------------------------------------------- helpers
def test_running_max_per_key_and_first_reaching_equal_a_loop():
    rng = np.random.default_rng(5)
    for _ in range(200):
        n, g = int(rng.integers(1, 40)), int(rng.integers(1, 6))
        codes, values = rng.integers(0, g, n), rng.integers(0, 20, n).astype(float)
        initial = np.where(rng.random(g) < 0.5, -np.inf, rng.integers(0, 20, g).astype(float))
        m = RunningMax(values, codes, initial)
        before, after, order = m.before, m.after, m.order
        best = dict(enumerate(initial))
        for i in range(n):
            assert before[i] == best[codes[i]]
            best[codes[i]] = max(best[codes[i]], values[i])
            assert after[i] == best[codes[i]]
        q_codes, q_values = rng.integers(0, g, 10), rng.integers(0, 25, 10).astype(float)
        got = m.first_reaching(q_codes, q_values)
        for c, v, pos in zip(q_codes, q_values, got):    # the batch's own values only, not ``initial``
            want, top = -1, -np.inf
            for j in range(n):
                if codes[order][j] == c:
                    top = max(top, values[order][j])
                    if top >= v:
                        want = j
                        break
            assert pos == want


# ---------------------------------------------------------------------------------------------------- clocks
def test_backlogs_of_twenty_devices_flushed_one_after_another_are_not_late():
    # each device buffered 25 s at 10 Hz (a dropped link) and sends it after the previous device's flush
    records = [r for d in range(20) for r in readings(f"d{d:02}", NOW - 600, 25, 10, seed=d)]
    assert len(records) == 5000
    opts = {"size": "10s", "key": ["device"], "aggregates": AGG, "allowed_lateness": "2s"}
    out, stage, dead = run(records, opts)
    assert counter(stage, "late") == 0 and not dead
    check(out, reference(records, 10.0, 10.0, ["t"], AGG["t"]))
    # the same with one clock for all devices loses most of them, as the issue reported
    _, old, _ = run(records, {**opts, "watermark": "global"})
    assert counter(old, "late") > 3000


def test_a_device_an_hour_behind_affects_nobody():
    streams = [readings(f"d{d}", NOW - 900, 300, 2, seed=d) for d in range(9)]
    streams.append(readings("behind", NOW - 900 - 3600, 300, 2, seed=99))
    records = interleaved(streams)
    opts = {"size": "10s", "key": ["device"], "aggregates": AGG, "allowed_lateness": "1s", "late": "dead_letter"}
    out, stage, dead = run(records, opts, batch_size=64)
    assert counter(stage, "late") == 0 and not dead
    check(out, reference(records, 10.0, 10.0, ["t"], AGG["t"], lateness=1.0))
    assert {r["tags"]["device"] for r in out} == {f"d{d}" for d in range(9)} | {"behind"}


def test_a_reading_a_year_ahead_is_dead_lettered_and_makes_nothing_late(caplog):
    streams = [readings(f"d{d}", NOW - 300, 100, 2, seed=d) for d in range(10)]
    records = interleaved(streams)
    poisoned = {"ts": NOW + 365 * 86400, "tags": {"device": "d3"}, "fields": {"t": 99.0}}
    records.insert(37, poisoned)
    opts = {"size": "10s", "key": ["device"], "aggregates": AGG, "allowed_lateness": "120s", "late": "dead_letter"}
    with caplog.at_level(logging.WARNING, logger="edgesieve"):
        out, stage, dead = run(records, opts)
    assert counter(stage, "future_timestamp") == 1 and counter(stage, "late") == 0
    assert [r for _, recs, _ in dead for r in recs] == [poisoned]
    assert "future_timestamp" in dead[0][2][0] and "ahead of its arrival time" in dead[0][2][0]
    kept = [r for r in records if r is not poisoned]
    check(out, reference(kept, 10.0, 10.0, ["t"], AGG["t"], lateness=120.0))
    lines = [m for m in caplog.messages if "stamped in the future" in m]
    assert len(lines) == 1 and "device=d3" in lines[0]


def test_without_max_future_a_poisoned_clock_stays_with_its_own_device():
    records = [r for d in range(3) for r in readings(f"d{d}", NOW - 100, 20, 1, seed=d)]
    records.insert(5, {"ts": NOW + 365 * 86400, "tags": {"device": "d0"}, "fields": {"t": 1.0}})
    opts = {"size": "10s", "key": ["device"], "aggregates": AGG, "allowed_lateness": "120s", "max_future": None}
    out, stage, _ = run(records, opts)
    assert counter(stage, "late") == 20 - 5    # d0's readings after the poisoned one; d1 and d2 untouched
    assert sum(r["fields"]["count"] for r in out if r["tags"]["device"] != "d0") == 40


def test_output_does_not_depend_on_batching_with_disagreeing_clocks():
    streams = [readings(f"d{d}", NOW - 2000 + 97 * d, 100, 3, seed=d) for d in range(8)]
    records = interleaved(streams)
    rng = np.random.default_rng(3)
    for r in records:                                         # out of order within each device, some late
        r["ts"] -= float(rng.uniform(0, 4))
    opts = {"size": "10s", "hop": "5s", "key": ["device"], "aggregates": AGG, "allowed_lateness": "1.5s"}
    outputs = [run(records, opts, batch_size=b)[0] for b in (1, 7, 250, len(records))]
    assert outputs[0] and all(o == outputs[0] for o in outputs[1:])
    check(outputs[0], reference(records, 10.0, 5.0, ["t"], AGG["t"], lateness=1.5))


def test_restart_mid_stream_equals_an_uninterrupted_run():
    streams = [readings(f"d{d}", NOW - 3000 - 1000 * (d % 3), 150, 4, seed=d) for d in range(6)]
    records = interleaved(streams)
    opts = {"size": "10s", "key": ["device"], "aggregates": AGG, "allowed_lateness": "2s"}
    whole, _, _ = run(records, opts, batch_size=50)
    first, _ = build_stage(Window, opts, clock=FakeClock(NOW))
    out = [first.process(Batch.from_records(records[i:i + 50])) for i in range(0, 1800, 50)]
    state = plain_copy(first.snapshot())
    assert state["watermark"] == "per_key" and len(state["clocks"]["max_ts"]) == 6
    second, _ = build_stage(Window, opts, clock=FakeClock(NOW + 3600))   # later, after downtime
    second.restore(state)
    assert second.tick(NOW + 3600) is None      # idle time counts from the restart
    out += [second.process(Batch.from_records(records[i:i + 50])) for i in range(1800, len(records), 50)]
    out.append(second.flush())
    assert Batch.concat(out).to_records() == whole


def test_a_checkpoint_with_a_poisoned_global_clock_is_repaired_on_restore(caplog):
    # format 1 (one clock), saved by a version without max_future after a reading a year ahead
    state = {"keys": [["d0"]], "pending": None, "max_ts": NOW + 365 * 86400, "seq": 1, "closed_wm": -np.inf}
    stage, _ = build_stage(Window, {"size": "10s", "key": ["device"], "aggregates": AGG}, clock=FakeClock(NOW))
    with caplog.at_level(logging.WARNING, logger="edgesieve"):
        stage.restore(state)
    assert any("more than max_future ahead" in m for m in caplog.messages)
    records = readings("d1", NOW + 400, 30, 1, seed=1)      # a little ahead of now + max_future's reset point
    stage.ctx.clock = FakeClock(NOW + 400)
    out = Batch.concat([stage.process(Batch.from_records(records)), stage.flush()]).to_records()
    assert counter(stage, "late") == 0 and sum(r["fields"]["count"] for r in out) == 30


# ---------------------------------------------------------------------------------------------------- closing
def test_a_quiet_key_is_closed_by_processing_time_and_its_windows_never_reopen():
    clock = FakeClock(NOW)
    stage, _ = build_stage(Window, {"size": "10s", "key": ["device"], "aggregates": {"t": ["count"]},
                                    "allowed_lateness": "2s", "idle_close": "5s"}, clock=clock)
    batch = lambda recs: Batch.from_records([{"ts": t, "tags": {"device": d}, "fields": {"t": 1.0}} for d, t in recs])
    assert len(stage.process(batch([("a", NOW - 100), ("a", NOW - 99), ("b", NOW - 50)]))) == 0
    clock.advance(3)
    assert len(stage.process(batch([("b", NOW - 49)]))) == 0
    clock.advance(3)                                          # a quiet for 6 s, b for 3 s
    closed = stage.tick(clock())
    assert [(r["tags"]["device"], r["ts"], r["fields"]["count"]) for r in closed.to_records()] == [("a", NOW - 100, 2)]
    assert counter(stage, "idle_closed") == 1
    after = stage.process(batch([("a", NOW - 98), ("a", NOW - 90)]))   # its window was emitted: late; a new one: on time
    assert len(after) == 0 and counter(stage, "late") == 1
    rest = stage.flush().to_records()
    assert sorted((r["tags"]["device"], r["ts"], r["fields"]["count"]) for r in rest) == [("a", NOW - 90, 1), ("b", NOW - 50, 2)]


def test_the_open_window_bound_emits_the_oldest_early_and_counts_them():
    records = interleaved([readings(f"d{d}", NOW - 500, 40, 1, seed=d) for d in range(20)])
    opts = {"size": "10s", "key": ["device"], "aggregates": AGG, "allowed_lateness": "60s", "max_open_windows": 25}
    out, stage, _ = run(records, opts, batch_size=20)
    forced = counter(stage, "windows_forced")
    assert forced > 0
    windows = [(r["tags"]["device"], r["ts"]) for r in out]
    assert len(windows) == len(set(windows))                 # each window once: forced-out ones never reopen
    assert sum(r["fields"]["count"] for r in out) + counter(stage, "late") == len(records)   # nothing lost silently


def test_late_readings_are_logged_once_per_key_and_episode(caplog):
    clock = FakeClock(NOW)
    stage, _ = build_stage(Window, {"size": "10s", "key": ["device"], "aggregates": {"t": ["count"]}}, clock=clock)
    live = readings("a", NOW - 100, 60, 1, seed=1)
    with caplog.at_level(logging.WARNING, logger="edgesieve"):
        stage.process(Batch.from_records(live))
        for i in range(5):                                    # 50 late readings in 5 batches: one line
            stage.process(Batch.from_records(readings("a", NOW - 100 + 10 * i, 10, 1, seed=i)))
        stage.process(Batch.from_records(readings("b", NOW - 100, 5, 1, seed=9)))   # another key: on time
        stage.process(Batch.from_records(readings("a", NOW - 39, 1, 1, seed=2)))    # a on time: episode over
        clock.advance(61)
        stage.process(Batch.from_records(readings("a", NOW - 100, 1, 1, seed=3)))  # a new episode
    lines = [m for m in caplog.messages if "late readings of device=a" in m]
    assert len(lines) == 2 and "behind the newest event time of its key" in lines[0]
    assert counter(stage, "late") == 51 and not [m for m in caplog.messages if "device=b" in m]


@pytest.mark.parametrize("before, after", [("per_key", "global"), ("global", "per_key")])
def test_changing_the_watermark_mode_across_a_restart_reopens_no_window(before, after):
    records = interleaved([readings(f"d{d}", NOW - 300 + 20 * d, 60, 2, seed=d) for d in range(4)])
    opts = {"size": "10s", "key": ["device"], "aggregates": AGG, "allowed_lateness": "2s"}
    first, _ = build_stage(Window, {**opts, "watermark": before}, clock=FakeClock(NOW))
    out = [first.process(Batch.from_records(records[:300]))]
    second, _ = build_stage(Window, {**opts, "watermark": after}, clock=FakeClock(NOW))
    second.restore(plain_copy(first.snapshot()))
    out += [second.process(Batch.from_records(records[300:])), second.flush()]
    windows = [(r["tags"]["device"], r["ts"]) for r in Batch.concat(out).to_records()]
    assert len(windows) == len(set(windows))
    total = sum(r["fields"]["count"] for r in Batch.concat(out).to_records())
    assert total + counter(first, "late") + counter(second, "late") == len(records)


@pytest.mark.parametrize("idle_close, late", [(None, 0), ("10s", "some")])
def test_a_live_device_that_loses_its_link_for_25s_and_flushes_its_buffer(idle_close, late):
    # live at 1 Hz, link down for 25 s (readings buffered), then the buffer arrives at once, then live again
    clock = FakeClock(NOW)
    opts = {"size": "10s", "key": ["device"], "aggregates": AGG, "allowed_lateness": "2s"}
    if idle_close:
        opts["idle_close"] = idle_close
    stage, _ = build_stage(Window, opts, clock=clock)
    sent = readings("pump", NOW - 0.5, 75, 1, seed=4)
    out = []
    for i, r in enumerate(sent):
        if 30 <= i < 55:                                  # buffered during the outage
            clock.advance(1)
            out.append(stage.tick(clock()) or Batch.empty())
            continue
        batch = sent[30:56] if i == 55 else [r]
        out.append(stage.process(Batch.from_records(batch)))
        clock.advance(1)
        out.append(stage.tick(clock()) or Batch.empty())
    out.append(stage.flush())
    got = Batch.concat(out).to_records()
    if late == 0:
        assert counter(stage, "late") == 0
        check(got, reference(sent, 10.0, 10.0, ["t"], AGG["t"]))
    else:   # the window open when the link dropped was emitted after 10 s of quiet: the rest of it is late
        assert 0 < counter(stage, "late") < 10
        assert sum(r["fields"]["count"] for r in got) + counter(stage, "late") == len(sent)
