"""An independent computation of windowed aggregates (plain Python and numpy's own functions), for the window tests."""

import numpy as np
import pytest

AGGS = ["count", "sum", "mean", "min", "max", "stddev", "first", "last", "p50", "p95", "p99"]


def reference(records, size, hop, fields, aggs, lateness=None, per_key=True):
    """Windows computed one by one with numpy's own functions (and lateness replayed record by record,
    against the newest event time of the record's own device, or of any device with ``per_key=False``)."""
    groups, max_ts = {}, {}
    for r in records:
        ts, clock = r["ts"], r["tags"]["device"] if per_key else None
        first = np.floor(ts / hop) * hop
        for j in range(int(np.ceil(size / hop))):
            start = first - j * hop
            if start + size <= ts:
                continue
            if lateness is not None and start + size <= max_ts.get(clock, -np.inf) - lateness:
                continue
            groups.setdefault((start, r["tags"]["device"]), []).append(r)
        max_ts[clock] = max(max_ts.get(clock, -np.inf), ts)
    out = {}
    for (start, device), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["ts"])
        rec = {"count": len(rs)}
        for f in fields:
            v = np.array([r["fields"][f] for r in rs if f in r["fields"]])
            if not len(v):
                if "count" in aggs:
                    rec[f"{f}_count"] = 0  # a field absent from the whole window counts 0, other aggregates are left out
                continue
            fns = {"count": len, "sum": np.sum, "mean": np.mean, "min": np.min, "max": np.max, "stddev": np.std,
                   "first": lambda x: x[0], "last": lambda x: x[-1], "p50": lambda x: np.percentile(x, 50),
                   "p95": lambda x: np.percentile(x, 95), "p99": lambda x: np.percentile(x, 99)}
            for a in aggs:
                rec[f"{f}_{a}"] = fns[a](v)
        out[(start, device)] = rec
    return out


def plain_copy(state):
    """``state`` through the checkpoint codec, after checking it holds only plain data and numpy arrays."""
    _check_plain(state)
    from pipeline.statefiles import roundtrip

    return roundtrip(state)


def _check_plain(state) -> None:
    if isinstance(state, dict):
        assert all(isinstance(k, str) for k in state), list(state)
        for v in state.values():
            _check_plain(v)
    elif isinstance(state, list):
        for v in state:
            _check_plain(v)
    elif isinstance(state, np.ndarray):
        assert state.dtype != object, "object arrays are not plain data"
    else:
        assert state is None or type(state) in (str, int, float, bool), f"{type(state).__name__} is not plain data"


def check(out, ref):
    got = {(r["ts"], r["tags"]["device"]): r["fields"] for r in out}
    assert got.keys() == ref.keys()
    for key, want in ref.items():
        assert got[key].keys() == want.keys(), key
        for name, value in want.items():
            if name.endswith(("_sum", "_mean", "_stddev")):
                # summation order differs (pairwise vs sequential): equal to the last few bits
                assert got[key][name] == pytest.approx(value, rel=1e-12, abs=1e-12), (key, name)
            else:
                assert got[key][name] == value, (key, name)  # count/min/max/first/last/percentiles: exact
