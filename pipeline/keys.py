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
    """
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


def factorize(values) -> tuple[np.ndarray, list]:
    """Codes (first-appearance order) and distinct values of a list or array of hashable keys (tuples too)."""
    if not isinstance(values, np.ndarray) or values.dtype != object:
        arr = np.empty(len(values), dtype=object)
        for i, v in enumerate(values):
            arr[i] = v
        values = arr
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


def grouped_running_max(values: np.ndarray, codes: np.ndarray, initial: np.ndarray):
    """Per row, the largest of ``initial[code]`` and the values of the rows of its code: before it and up to it.

    A running maximum per group, in batch order, without a loop: rows are sorted by code and their values
    replaced by ranks, so one ``maximum.accumulate`` over ``code * n + rank`` scans every group at once.
    Returns ``(before, after, order)``: two arrays in batch order and the stable sort of the rows by code.
    ``values`` must not contain NaN.

    >>> before, after, _ = grouped_running_max(np.array([5.0, 1.0, 3.0, 9.0, 2.0]), np.array([0, 1, 0, 1, 0]),
    ...                                        np.array([4.0, -np.inf]))
    >>> before.tolist(), after.tolist()
    ([4.0, -inf, 5.0, 1.0, 5.0], [5.0, 1.0, 5.0, 9.0, 5.0])
    """
    n = len(values)
    order = np.argsort(codes, kind="stable")
    c = codes[order].astype(np.int64)
    v = values[order]
    by_value = np.argsort(v, kind="stable")
    rank = np.empty(n, dtype=np.int64)
    rank[by_value] = np.arange(n)
    best = np.maximum.accumulate(c * n + rank) - c * n     # within a group only: earlier groups have smaller keys
    start = initial[c]
    after_sorted = np.maximum(v[by_value[best]], start)
    before_sorted = np.empty(n, dtype=np.float64)
    before_sorted[1:] = after_sorted[:-1]
    first = np.ones(n, dtype=bool)
    first[1:] = c[1:] != c[:-1]
    before_sorted[first] = start[first]
    before, after = np.empty(n, dtype=np.float64), np.empty(n, dtype=np.float64)
    before[order], after[order] = before_sorted, after_sorted
    return before, after, order


def first_reaching(codes_sorted: np.ndarray, values_sorted: np.ndarray, q_codes: np.ndarray, q_values: np.ndarray) -> np.ndarray:
    """Per query ``(code, value)``: the index of the first row of that code whose value is >= value, or -1.

    ``codes_sorted`` is non-decreasing and ``values_sorted`` non-decreasing within each code (a running maximum).

    >>> first_reaching(np.array([0, 0, 1, 1]), np.array([1.0, 4.0, 2.0, 3.0]), np.array([0, 0, 1, 1]),
    ...                np.array([3.0, 5.0, 2.0, 0.0])).tolist()
    [1, -1, 2, 2]
    """
    if not len(q_codes):
        return np.empty(0, dtype=np.int64)
    _, rank = np.unique(np.concatenate((values_sorted, q_values)), return_inverse=True)
    m = int(rank.max()) + 1
    keys = codes_sorted.astype(np.int64) * m + rank[:len(values_sorted)]
    pos = np.searchsorted(keys, q_codes.astype(np.int64) * m + rank[len(values_sorted):], side="left")
    found = pos < len(keys)
    found[found] = codes_sorted[pos[found]] == q_codes[found]
    return np.where(found, pos, -1)
