"""Grouping the rows of a batch by key tags (per device, per site and device, ...), without a loop over records.

A key is the tuple of the record's values of the key tags (None where a tag is absent). Keys are numbered in the
order they first appear in the batch.

>>> from pipeline.batch import Batch
>>> b = Batch.from_records([{"ts": 1, "tags": {"device": "b"}}, {"ts": 2, "tags": {"device": "a"}},
...                         {"ts": 3, "tags": {"device": "b"}}, {"ts": 4, "tags": {}}])
>>> codes, keys = key_codes(b, ["device"])
>>> codes.tolist(), keys
([0, 1, 0, 2], [('b',), ('a',), (None,)])
>>> [(k, rows.tolist()) for k, rows in key_groups(b, ["device"])]
[(('b',), [0, 2]), (('a',), [1]), ((None,), [3])]
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from .batch import Batch


def key_codes(batch: Batch, key: Sequence[str]) -> tuple[np.ndarray, list[tuple]]:
    """Per row, the number of its key; and the key tuple of each number (first-appearance order)."""
    n = len(batch)
    if not key:
        return np.zeros(n, dtype=np.int64), [()] if n else []
    cols = [batch.tags.get(k) for k in key]
    cols = [c if c is not None else np.full(n, None, dtype=object) for c in cols]
    if len(cols) == 1:
        codes, uniques = _factorize(cols[0])
        return codes.astype(np.int64), [(None if pd.isna(u) else u,) for u in uniques]
    combined = np.zeros(n, dtype=np.int64)
    for col in cols:
        c, uniques = _factorize(col)
        combined = combined * (len(uniques) + 1) + c
    codes, firsts = pd.factorize(combined, use_na_sentinel=False)
    first_rows = np.zeros(len(firsts), dtype=np.int64)
    first_rows[codes[::-1]] = np.arange(n)[::-1]
    keys = [tuple(c[i] for c in cols) for i in first_rows.tolist()]
    return codes.astype(np.int64), keys


def _factorize(col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``pd.factorize(col, use_na_sentinel=False)``, 2-3x faster on object columns (pandas 3 scans them for NA).

    Absent values (None, NaN) get the code they would have in first-appearance order, and NaN in the uniques.
    Small object columns (a camera's micro-batch of a few frames) take a dict lookup instead: pandas' fixed cost
    per call is tens of microseconds.
    """
    if len(col) <= _SMALL and col.dtype == object:
        return _factorize_small(col)
    codes, uniques = pd.factorize(col)                     # absent -> -1
    if not len(codes):
        return codes, uniques
    absent = codes < 0
    if not absent.any():
        return codes, uniques
    first = int(np.argmax(absent))
    k = int(codes[:first].max()) + 1 if first else 0       # distinct values seen before the first absent one
    codes = np.where(absent, k, codes + (codes >= k))
    return codes, np.concatenate([uniques[:k], np.array([np.nan], dtype=object), uniques[k:]]).astype(uniques.dtype)


_SMALL = 24
_ABSENT = object()


def _factorize_small(col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    table: dict = {}
    codes = np.empty(len(col), dtype=np.int64)
    for i, v in enumerate(col.tolist()):
        if v is None or (isinstance(v, float) and v != v):
            v = _ABSENT
        c = table.get(v)
        if c is None:
            c = table[v] = len(table)
        codes[i] = c
    uniques = np.empty(len(table), dtype=object)
    for v, c in table.items():
        uniques[c] = np.nan if v is _ABSENT else v
    return codes, uniques


def _na_as_nan(v):
    """None and NaN as the one ``np.nan`` object (what pandas gives as their unique value)."""
    return np.nan if v is None or (isinstance(v, float) and v != v) else v


def factorize(values) -> tuple[np.ndarray, list]:
    """Codes (first-appearance order) and distinct values of a list or array of hashable keys (tuples too)."""
    if not isinstance(values, np.ndarray) or values.dtype != object:
        arr = np.empty(len(values), dtype=object)
        for i, v in enumerate(values):
            arr[i] = v
        values = arr
    if len(values) <= _SMALL:                                 # a dict beats pandas' fixed cost here
        table: dict = {}
        codes = np.fromiter((table.setdefault(_na_as_nan(v), len(table)) for v in values.tolist()), np.int64, len(values))
        return codes, list(table)
    codes, uniques = pd.factorize(values, use_na_sentinel=False)
    return codes.astype(np.int64), list(uniques)


def group_rows(codes: np.ndarray, ngroups: int) -> list[np.ndarray]:
    """Row indices (in batch order) of each code 0..ngroups-1."""
    if ngroups <= 1:
        return [np.arange(len(codes))] if ngroups else []
    order = np.argsort(codes, kind="stable")
    return np.split(order, np.cumsum(np.bincount(codes, minlength=ngroups))[:-1])


def key_groups(batch: Batch, key: Sequence[str]) -> list[tuple[tuple, np.ndarray]]:
    """(key tuple, row indices in batch order) per distinct key, in order of first appearance."""
    codes, keys = key_codes(batch, key)
    return list(zip(keys, group_rows(codes, len(keys))))


class RunningMax:
    """Per row, the largest of ``initial[code]`` and the values of the rows of its code: before it and up to it.

    A running maximum per group, in batch order, without a loop: rows are sorted by code and their values
    replaced by ranks, so one ``maximum.accumulate`` over ``code * n + rank`` scans every group at once.
    ``before`` and ``after`` are in batch order; ``order`` is the stable sort of the rows by code. ``values``
    must not contain NaN.

    >>> m = RunningMax(np.array([5.0, 1.0, 3.0, 9.0, 2.0]), np.array([0, 1, 0, 1, 0]), np.array([4.0, -np.inf]))
    >>> m.before.tolist(), m.after.tolist()
    ([4.0, -inf, 5.0, 1.0, 5.0], [5.0, 1.0, 5.0, 9.0, 5.0])
    >>> m.first_reaching(np.array([0, 1, 1]), np.array([5.0, 2.0, 10.0])).tolist()   # rows 0 and 3 (order[0], order[4])
    [0, 4, -1]
    """

    def __init__(self, values: np.ndarray, codes: np.ndarray, initial: np.ndarray):
        n = len(values)
        self.n = n
        self.order = order = np.argsort(codes, kind="stable")
        self.codes_sorted = c = codes[order].astype(np.int64)
        v = values[order]
        by_value = np.argsort(v, kind="stable")
        self._sorted_values = v[by_value]
        rank = np.empty(n, dtype=np.int64)
        rank[by_value] = np.arange(n)
        self._keys = np.maximum.accumulate(c * n + rank)   # within a group only: earlier groups have smaller keys
        start = initial[c]
        after_sorted = np.maximum(v[by_value[self._keys - c * n]], start)
        before_sorted = np.empty(n, dtype=np.float64)
        before_sorted[1:] = after_sorted[:-1]
        first = np.ones(n, dtype=bool)
        first[1:] = c[1:] != c[:-1]
        before_sorted[first] = start[first]
        self.before, self.after = np.empty(n, dtype=np.float64), np.empty(n, dtype=np.float64)
        self.before[order], self.after[order] = before_sorted, after_sorted

    def first_reaching(self, q_codes: np.ndarray, q_values: np.ndarray) -> np.ndarray:
        """Per query ``(code, value)``: the position (in ``order``) of the first row of that code whose own running
        maximum of the batch's values is >= value, or -1. ``initial`` is not considered: the caller asks only for
        values above it."""
        n = self.n
        rank = np.searchsorted(self._sorted_values, q_values, side="left")   # first rank whose value is >= q
        pos = np.searchsorted(self._keys, q_codes.astype(np.int64) * n + rank, side="left")
        found = (rank < n) & (pos < n)
        found[found] = self.codes_sorted[pos[found]] == q_codes[found]
        return np.where(found, pos, -1)
