"""Vectorised per-group aggregates for the window stage (rows already sorted by group, then event time).

>>> import numpy as np
>>> out = aggregate_groups("t", np.array([1.0, 3.0, np.nan, 5.0]), np.array([0, 0, 1, 1]), 2, ["mean", "p50", "count"])
>>> {k: v.tolist() for k, v in out.items()}
{'t_mean': [2.0, 5.0], 't_p50': [2.0, 5.0], 't_count': [2, 1]}
"""

from __future__ import annotations

import numpy as np

AGGREGATES = ("count", "sum", "mean", "min", "max", "stddev", "first", "last", "p50", "p95", "p99")


def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """numpy.percentile's own linear interpolation, so results are bit-identical to it."""
    diff = b - a
    out = a + diff * t
    hi = t >= 0.5
    out[hi] = (b - diff * (1 - t))[hi]
    return out


def aggregate_groups(name: str, values: np.ndarray, group: np.ndarray, ngroups: int, aggs: list[str]) -> dict[str, np.ndarray]:
    """Aggregates of ``values`` per ``group`` id (0..ngroups-1, non-decreasing); absent values (NaN) are skipped.

    A group with no value for this field gets NaN (the field is left out of that output record).
    """
    valid = ~np.isnan(values)
    v, g = values[valid], group[valid]
    counts = np.bincount(g, minlength=ngroups)
    has = counts > 0
    nonempty = np.flatnonzero(has)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))[nonempty]
    out: dict[str, np.ndarray] = {}

    def full(per_nonempty: np.ndarray) -> np.ndarray:
        col = np.full(ngroups, np.nan)
        col[nonempty] = per_nonempty
        return col

    sums = np.add.reduceat(v, starts) if len(v) else np.empty(0)
    means = sums / counts[nonempty] if len(v) else np.empty(0)
    sorted_v = None
    for agg in aggs:
        key = f"{name}_{agg}"
        if agg == "count":
            out[key] = counts
        elif agg == "sum":
            out[key] = full(sums)
        elif agg == "mean":
            out[key] = full(means)
        elif agg == "min":
            out[key] = full(np.minimum.reduceat(v, starts) if len(v) else np.empty(0))
        elif agg == "max":
            out[key] = full(np.maximum.reduceat(v, starts) if len(v) else np.empty(0))
        elif agg == "stddev":
            dev = v - np.repeat(means, counts[nonempty])
            out[key] = full(np.sqrt(np.add.reduceat(dev * dev, starts) / counts[nonempty]) if len(v) else np.empty(0))
        elif agg == "first":
            out[key] = full(v[starts])
        elif agg == "last":
            out[key] = full(v[starts + counts[nonempty] - 1])
        elif agg in ("p50", "p95", "p99"):
            if sorted_v is None:
                sorted_v = v[np.lexsort((v, g))]
            q = int(agg[1:]) / 100
            c = counts[nonempty]
            h = (c - 1) * q
            lo = np.floor(h).astype(np.int64)
            hi = np.minimum(lo + 1, c - 1)
            out[key] = full(_lerp(sorted_v[starts + lo], sorted_v[starts + hi], h - lo))
        else:  # pragma: no cover - the config only admits AGGREGATES
            raise ValueError(f"unknown aggregate {agg!r}")
    return out
