"""Split a batch into records whose named fields are usable numbers and records that must be dead-lettered.

>>> from pipeline.batch import Batch
>>> b = Batch.from_records([{"ts": 1, "fields": {"t": 1.0}}, {"ts": 2, "fields": {"t": "hot"}},
...                         {"ts": 3, "fields": {"t": float("inf")}}])
>>> good, bad, reasons = split_numeric(b, ["t"], "filter 'hot'")
>>> len(good), reasons
(1, ["filter 'hot': field 't' is 'hot', not a number", "filter 'hot': field 't' is inf, not a finite number"])
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np

from .batch import Batch


def _as_float(value: object) -> float | None:
    if value is None:
        return math.nan
    if isinstance(value, (bool, np.bool_)):
        return float(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    return None


def split_numeric(batch: Batch, names: Iterable[str], where: str) -> tuple[Batch, Batch, list[str]]:
    """Return (good batch with float columns, bad batch, one reason per bad record). Absent (NaN) is not bad."""
    n = len(batch)
    bad = np.zeros(n, dtype=bool)
    reasons: dict[int, str] = {}
    converted: dict[str, np.ndarray] = {}
    for name in names:
        col = batch.fields.get(name)
        if col is None:
            continue
        if col.dtype == object:
            out = np.empty(n, dtype=np.float64)
            for i, v in enumerate(col):
                f = _as_float(v)
                if f is None:
                    bad[i] = True
                    reasons.setdefault(i, f"{where}: field {name!r} is {v!r}, not a number")
                    out[i] = math.nan
                else:
                    out[i] = f
            col = out
        elif col.dtype == bool:
            col = col.astype(np.float64)
        inf = np.isinf(col) if col.dtype.kind == "f" else np.zeros(n, dtype=bool)
        for i in np.flatnonzero(inf & ~bad):
            reasons.setdefault(int(i), f"{where}: field {name!r} is {col[i]}, not a finite number")
        bad |= inf
        converted[name] = col
    if not bad.any():
        return (batch.with_fields(**converted) if converted else batch), Batch.empty(), []
    good = batch.with_fields(**converted).take(~bad)
    return good, batch.take(bad), [reasons[i] for i in sorted(reasons)]
