"""The ``max_open_windows`` bound of the window stage does not depend on where micro-batches were cut.

The reference is the same stage fed one reading per micro-batch: after each reading (and the watermark closes it
causes) the oldest windows are forced out until at most ``max_open_windows`` are open. Any other cut of the same
stream, and a checkpoint restored mid-stream and replayed with other cuts, must give the same output records in
the same order, the same counters and the same dead letters.
"""

import numpy as np
import pytest

from pipeline.batch import Batch
from pipeline.stages.window import Window
from pipeline.testing import FakeClock, build_stage
from tests.support.windows import plain_copy

NOW = 1_767_225_600.0
AGG = {"t": ["count", "sum", "max", "last", "p95"]}
COUNTERS = ("late", "windows_forced", "dead_lettered")

SETTINGS = {
    "tumbling-per_key-3": {"size": "10s", "watermark": "per_key", "max_open_windows": 3, "allowed_lateness": "3s"},
    "hopping-per_key-25": {"size": "10s", "hop": "2.5s", "watermark": "per_key", "max_open_windows": 25,
                           "allowed_lateness": "2s"},
    "tumbling-global-25": {"size": "5s", "watermark": "global", "max_open_windows": 25, "allowed_lateness": "20s"},
    "hopping-global-3": {"size": "10s", "hop": "5s", "watermark": "global", "max_open_windows": 3,
                         "allowed_lateness": "30s"},
}


def stream(seed: int) -> list[dict]:
    """Readings of 7 devices in arrival order: jittered (some late), one an hour behind that catches up halfway,
    one that stalls for 40 s and then sends its backlog at once, and one with a field missing now and then."""
    rng = np.random.default_rng(seed)
    per_device = []
    for d in range(7):
        ts = NOW - 400 + np.arange(120) * 1.0 + rng.uniform(0, 0.5, 120)
        ts -= rng.uniform(0, 4.0, 120) * (rng.random(120) < 0.3)          # out of order: some late
        if d == 5:                                                          # an hour behind, then live
            ts[:60] -= 3600
        per_device.append([(float(t), d) for t in ts])
    arrival = []
    owner = rng.permutation(np.repeat(np.arange(7), 120))
    its = [iter(s) for s in per_device]
    for k in owner:
        arrival.append(next(its[k]))
    stalled = [r for r in arrival if r[1] == 6 and NOW - 330 <= r[0] < NOW - 290]
    arrival = [r for r in arrival if r not in stalled]
    back = next(i for i, r in enumerate(arrival) if r[1] != 6 and r[0] >= NOW - 285)
    arrival[back:back] = stalled                                            # the backlog, in one burst
    out = []
    for i, (t, d) in enumerate(arrival):
        fields = {} if d == 3 and i % 11 == 0 else {"t": float(rng.normal(20, 3))}
        out.append({"ts": t, "tags": {"device": f"d{d}"}, "fields": fields})
    return out


def options(name: str) -> dict:
    return {"key": ["device"], "aggregates": AGG, "late": "dead_letter", **SETTINGS[name]}


def feed(stage, records, cuts) -> list[dict]:
    bounds = [0, *cuts, len(records)]
    out = [stage.process(Batch.from_records(records[a:b])) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    return Batch.concat(out).to_records()


def outcome(stage, dead, out) -> tuple:
    counters = {c: stage.ctx.metrics.get("under_test", c) for c in COUNTERS}
    return out, counters, dead_letters(dead)


def dead_letters(dead) -> list[tuple]:
    """(record, reason) per dead letter, in order (a batch's reasons are a list, or one for all)."""
    pairs = []
    for _, recs, reasons in dead:
        pairs += zip(recs, [reasons] * len(recs) if isinstance(reasons, str) else reasons)
    return pairs


def run(name, records, cuts) -> tuple:
    stage, dead = build_stage(Window, options(name), clock=FakeClock(NOW))
    out = feed(stage, records, cuts) + (stage.flush() or Batch.empty()).to_records()
    return outcome(stage, dead, out)


def random_cuts(rng, n) -> list[int]:
    """Cut points of one random pattern: batches from 1 to ~n/4 readings, small and large mixed."""
    cuts, pos = [], 0
    while True:
        pos += int(rng.choice([1, 2, 5, 17, 60, n // 4])) if rng.random() < 0.8 else int(rng.integers(1, n // 3))
        if pos >= n:
            return cuts
        cuts.append(pos)


@pytest.fixture(scope="module")
def references():
    """One reading per micro-batch: the reference for every cut."""
    records = stream(seed=7)
    return records, {name: run(name, records, list(range(1, len(records)))) for name in SETTINGS}


@pytest.mark.parametrize("name", SETTINGS)
def test_the_reference_forces_windows_and_has_late_readings(references, name):
    records, refs = references
    out, counters, dead = refs[name]
    assert counters["windows_forced"] > 10 and counters["late"] > 10 and dead
    windows = [(r["tags"]["device"], r["ts"]) for r in out]
    assert len(windows) == len(set(windows))
    assert len(dead) <= counters["late"]
    if "hop" not in SETTINGS[name]:       # tumbling: every reading is in one window or late, never both
        assert sum(r["fields"]["count"] for r in out) + counters["late"] == len(records)


@pytest.mark.parametrize("name", SETTINGS)
def test_any_cut_gives_the_one_reading_at_a_time_output(references, name):
    records, refs = references
    want = refs[name]
    assert run(name, records, []) == want                     # the whole stream in one micro-batch
    rng = np.random.default_rng(sorted(SETTINGS).index(name))
    for pattern in range(10):
        cuts = random_cuts(rng, len(records))
        got = run(name, records, cuts)
        assert got[1] == want[1], (pattern, cuts[:8])
        assert got[0] == want[0], (pattern, cuts[:8])
        assert got[2] == want[2], (pattern, cuts[:8])


@pytest.mark.parametrize("name", SETTINGS)
@pytest.mark.parametrize("incremental", [False, True])
def test_a_checkpoint_mid_stream_replayed_with_other_cuts_gives_the_same(references, name, incremental):
    records, refs = references
    want_out, want_counters, want_dead = refs[name]
    rng = np.random.default_rng(100 + sorted(SETTINGS).index(name))
    for _ in range(3):
        at = int(rng.integers(len(records) // 5, 4 * len(records) // 5))
        first, dead1 = build_stage(Window, options(name), clock=FakeClock(NOW))
        out = feed(first, records[:at], random_cuts(rng, at))
        second, dead2 = build_stage(Window, options(name), clock=FakeClock(NOW))
        if incremental:
            second.restore_entries(first.snapshot_changes().entries)
        else:
            second.restore(plain_copy(first.snapshot()))
        rest = records[at:]
        out += feed(second, rest, random_cuts(rng, len(rest)))
        out += (second.flush() or Batch.empty()).to_records()
        counters = {c: first.ctx.metrics.get("under_test", c) + second.ctx.metrics.get("under_test", c)
                    for c in COUNTERS}
        assert counters == want_counters, at
        assert out == want_out, at
        assert dead_letters(dead1 + dead2) == want_dead, at


def test_a_limit_lowered_across_a_restart_forces_at_the_first_reading_whatever_the_cut(references):
    records, _ = references
    first, _ = build_stage(Window, options("hopping-per_key-25"), clock=FakeClock(NOW))
    feed(first, records[:400], [])
    state = plain_copy(first.snapshot())
    assert len(first.open.windows()["start"]) > 8
    lowered = {**options("hopping-per_key-25"), "max_open_windows": 4}
    results = []
    for cuts in (list(range(1, len(records) - 400)), [], [1, 2, 60, 61, 200]):
        stage, dead = build_stage(Window, lowered, clock=FakeClock(NOW))
        stage.restore(state)
        out = feed(stage, records[400:], cuts) + (stage.flush() or Batch.empty()).to_records()
        results.append(outcome(stage, dead, out))
    assert results[0][1]["windows_forced"] > 4
    assert results[1] == results[0] and results[2] == results[0]
