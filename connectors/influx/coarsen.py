"""Exact merging of windowed aggregates into coarser windows (what the outbox does when its disk bound is hit).

Field names follow ``<base>_<aggregate>``. Merge rules, exact unless noted:

============  ==================================================================================
count, sum    added (also a bare ``count`` field: the window's record count, as the window stage emits)
min / max     min / max
mean          count-weighted mean (weights: ``<base>_count``, else the bare ``count``; without either:
              plain mean, *approximate*)
var, stddev   pooled with the parallel-variance formula from count, mean and var/stddev
              (``ddof`` as the window stage computed it; without count and mean: *approximate*)
first / last  the value of the earliest / latest member window
pNN, qNN,     count-weighted mean of the members' quantiles: *approximate* (quantiles do not merge)
median
bool field    any member true
other         plain mean: *approximate*
============  ==================================================================================

>>> a = {"t_count": 2.0, "t_sum": 3.0, "t_mean": 1.5, "t_min": 1.0, "t_max": 2.0, "t_stddev": 0.5}
>>> b = {"t_count": 1.0, "t_sum": 3.0, "t_mean": 3.0, "t_min": 3.0, "t_max": 3.0, "t_stddev": 0.0}
>>> merged, approximate = merge_fields([a, b], ddof=0)
>>> merged["t_count"], merged["t_sum"], merged["t_mean"], merged["t_min"], merged["t_max"], approximate
(3.0, 6.0, 2.0, 1.0, 3.0, False)
>>> merge_fields([{"count": 2, "t_mean": 1.0}, {"count": 1, "t_mean": 4.0}])
({'count': 3.0, 't_mean': 2.0}, False)
>>> round(merged["t_stddev"], 12) == round(((1 - 2) ** 2 + (2 - 2) ** 2 + (3 - 2) ** 2) ** 0.5 / 3 ** 0.5, 12)
True
"""
from __future__ import annotations

import math
import re

EXACT_AGGS = ("count", "sum", "min", "max", "mean", "avg", "var", "variance", "stddev", "std", "first", "last")
_QUANTILE = re.compile(r"^(p\d+(\.\d+)?|q\d+(\.\d+)?|median)$")


def split_field(name: str) -> tuple[str, str | None]:
    """``"temp_mean" -> ("temp", "mean")``; ``"temp" -> ("temp", None)``; ``"temp_p95" -> ("temp", "p95")``.

    >>> split_field("temp_mean"), split_field("vibration_x_p95"), split_field("score")
    (('temp', 'mean'), ('vibration_x', 'p95'), ('score', None))
    """
    base, sep, agg = name.rpartition("_")
    if sep and base and (agg in EXACT_AGGS or _QUANTILE.match(agg)):
        return base, agg
    return name, None


def merge_fields(members: list[dict], ddof: int = 1) -> tuple[dict, bool]:
    """Merge the field dicts of windows (ordered oldest first) into one; return ``(fields, approximate)``.

    One window alone is itself, exactly (its quantiles too).
    """
    if len(members) == 1:
        return dict(members[0]), False
    bases: dict[str, dict[str, str]] = {}
    for m in members:
        for name in m:
            base, agg = split_field(name)
            bases.setdefault(base, {})[agg] = name
    out: dict = {}
    approx = False
    bare_count = "count" if "count" in bases and None in bases["count"] else None
    for base, aggs in bases.items():
        cnt_name = aggs.get("count") or bare_count
        for agg, name in aggs.items():
            have = [m for m in members if name in m]
            vals = [m[name] for m in have]
            if isinstance(vals[0], bool):
                out[name] = any(vals)
                continue
            counts = [m.get(cnt_name) for m in have] if cnt_name else None
            if counts is not None and any(c is None for c in counts):
                counts = None
            if agg in ("count", "sum") or name == "count":
                out[name] = math.fsum(vals)
            elif agg == "min":
                out[name] = min(vals)
            elif agg == "max":
                out[name] = max(vals)
            elif agg == "first":
                out[name] = vals[0]
            elif agg == "last":
                out[name] = vals[-1]
            elif agg in ("mean", "avg"):
                if counts is not None and sum(counts) > 0:
                    out[name] = math.fsum(c * v for c, v in zip(counts, vals)) / math.fsum(counts)
                else:
                    out[name], approx = math.fsum(vals) / len(vals), True
            elif agg in ("var", "variance", "stddev", "std"):
                value, exact = _pool_spread(members, have, cnt_name, aggs, agg, name, ddof)
                out[name] = value
                approx |= not exact
            else:  # quantiles and fields without an aggregate suffix do not merge exactly
                if counts is not None and sum(counts) > 0:
                    out[name] = math.fsum(c * v for c, v in zip(counts, vals)) / math.fsum(counts)
                else:
                    out[name] = math.fsum(vals) / len(vals)
                approx = True
    return out, approx


def _pool_spread(members, have, cnt_name, aggs, agg, name, ddof) -> tuple[float, bool]:
    """Pooled variance / stddev of member windows (Chan et al.); falls back to an approximation.

    A window with ``count <= ddof`` has no spread (NaN, stored as absent) but still adds its mean.
    """
    squared = agg in ("stddev", "std")
    mean_name = aggs.get("mean") or aggs.get("avg")
    usable = cnt_name and mean_name and all(
        cnt_name in m and mean_name in m and (name in m or m[cnt_name] <= max(ddof, 1)) for m in members)
    if not usable:
        spreads = [m[name] ** 2 if squared else m[name] for m in have]
        v = math.fsum(spreads) / len(spreads)
        return (math.sqrt(v) if squared else v), False
    counts = [m[cnt_name] for m in members]
    n = math.fsum(counts)
    if n - ddof <= 0:
        return 0.0, False
    means = [m[mean_name] for m in members]
    mu = math.fsum(c * x for c, x in zip(counts, means)) / n
    m2 = math.fsum((0.0 if name not in m else (m[name] ** 2 if squared else m[name]) * (c - ddof)) + c * (x - mu) ** 2
                   for m, c, x in zip(members, counts, means))
    v = m2 / (n - ddof)
    return (math.sqrt(v) if squared else v), True
