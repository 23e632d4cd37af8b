"""Deadband (report by exception): semantics, vectorised == reference loop, state."""

from pipeline.statefiles import roundtrip

import numpy as np
import pytest

from cache.deadband import Deadband


def reference(keys, ts, values, deviation=None, percent=None, max_interval=None, min_interval=0.0):
    """The semantics written as a plain loop, one reading at a time."""
    last, out = {}, []
    for k, t, v in zip(keys, ts, values):
        if k not in last:
            last[k] = (v.copy(), t)
            out.append(True)
            continue
        lv, lt = last[k]
        moved = False
        for a, b in zip(v, lv):
            if np.isnan(a):
                continue
            if np.isnan(b):
                moved = True
            elif deviation is not None and abs(a - b) > deviation:
                moved = True
            elif percent is not None and abs(a - b) > abs(b) * percent / 100:
                moved = True
        late = max_interval is not None and t - lt >= max_interval
        ok = (moved or late) and t - lt >= min_interval
        if ok:
            last[k] = (np.where(np.isnan(v), lv, v), t)
        out.append(ok)
    return out


@pytest.mark.parametrize("kw", [dict(deviation=0.5), dict(percent=2.0, max_interval=5.0),
                                dict(deviation=0.3, min_interval=2.0, max_interval=8.0),
                                dict(max_interval=3.0)])
@pytest.mark.parametrize("batch", [1, 7, 500])
def test_vectorised_equals_reference_loop(kw, batch):
    rng = np.random.default_rng(11)
    n = 500
    keys = rng.choice(["p1", "p2", "p3"], n).tolist()
    ts = np.cumsum(rng.uniform(0.1, 1.0, n))
    values = 20 + np.cumsum(rng.normal(0, 0.15, (n, 2)), axis=0)
    values[rng.random((n, 2)) < 0.05] = np.nan
    db = Deadband(**kw)
    got = []
    for i in range(0, n, batch):
        got += db.decide(keys[i:i + batch], ts[i:i + batch], values[i:i + batch]).passed.tolist()
    assert got == reference(keys, ts, values, **kw)
    st = db.stats()
    assert sum(s["seen"] for s in st.values()) == n
    assert sum(s["passed"] for s in st.values()) == sum(got)


def test_min_interval_limits_rate_and_counts_suppressed():
    db = Deadband(deviation=0.1, min_interval=1.0)
    v = np.arange(10, dtype=float)[:, None]          # every reading moves by 1
    d = db.decide(["k"] * 10, np.arange(10) * 0.25, v)
    assert np.flatnonzero(d.passed).tolist() == [0, 4, 8]
    assert d.suppressed_before[[4, 8]].tolist() == [3, 3]
    assert db.stats()["k"] == {"seen": 10, "passed": 3, "suppressed": 7}


def test_percent_deviation_is_relative_to_last_passed_value():
    db = Deadband(percent=10.0)
    d = db.decide(["k"] * 4, [0, 1, 2, 3], [[100.0], [109.0], [111.0], [121.0]])
    assert d.passed.tolist() == [True, False, True, False]
    assert d.reason.tolist() == ["first", "suppressed", "moved", "suppressed"]


def test_needs_a_rule():
    with pytest.raises(ValueError, match="at least one"):
        Deadband()


def test_snapshot_restore_mid_stream():
    rng = np.random.default_rng(2)
    keys = ["a", "b"] * 50
    ts = np.arange(100) * 0.5
    v = np.cumsum(rng.normal(0, 0.3, (100, 1)), axis=0)
    full = Deadband(deviation=0.5, max_interval=4).decide(keys, ts, v).passed.tolist()
    db = Deadband(deviation=0.5, max_interval=4)
    got = db.decide(keys[:37], ts[:37], v[:37]).passed.tolist()
    db2 = Deadband(deviation=0.5, max_interval=4)
    db2.restore(roundtrip(db.snapshot()))
    got += db2.decide(keys[37:], ts[37:], v[37:]).passed.tolist()
    assert got == full
