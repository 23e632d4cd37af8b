"""Named numpy arrays with one row per key slot: the cross-key state of a stage, grown by doubling.

>>> a = SlotArrays({"level": ((2,), np.float64, 0.0), "n": ((), np.int64, 0)}, capacity=2)
>>> a.grow(20); a.capacity, a.level.shape
(32, (32, 2))
>>> a.level[3] = 1.5; a.reset(np.array([3])); float(a.level[3, 0])
0.0
"""
from __future__ import annotations

import numpy as np

__all__ = ["SlotArrays", "rank_passes"]


class SlotArrays:
    """`specs`: name -> (shape of one slot's row, dtype, value of a fresh row); each name is an attribute."""

    def __init__(self, specs: dict, capacity: int = 16):
        self.specs = dict(specs)
        self.capacity = 0
        for name, (shape, dtype, fill) in self.specs.items():
            setattr(self, name, np.full((0, *shape), fill, dtype=dtype))
        self.grow(capacity)

    def grow(self, need: int) -> None:
        """Make room for slots 0 .. need - 1 (new rows are fresh)."""
        if need <= self.capacity:
            return
        cap = max(need, 2 * self.capacity, 16)
        for name, (shape, dtype, fill) in self.specs.items():
            old = getattr(self, name)
            new = np.full((cap, *shape), fill, dtype=dtype)
            new[:len(old)] = old
            setattr(self, name, new)
        self.capacity = cap

    def reset(self, slots: np.ndarray) -> None:
        """Rows `slots` back to the state of a fresh key."""
        for name, (_shape, _dtype, fill) in self.specs.items():
            getattr(self, name)[slots] = fill

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, name).nbytes for name in self.specs)


def rank_passes(slots: np.ndarray):
    """Yield, for r = 0, 1, ..., the rows holding the r-th row of each slot (stream order within a slot) and,
    for each of them, how many rows of its slot are left including it.  A pass has each slot at most once."""
    order = np.argsort(slots, kind="stable")
    k = slots[order]
    start = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    size = np.diff(np.r_[start, len(k)])
    rank = np.arange(len(k)) - np.repeat(start, size)
    left = np.repeat(size, size) - rank
    if size.max(initial=0) == 1:
        yield order, left
        return
    by_rank = np.argsort(rank, kind="stable")
    bounds = np.flatnonzero(np.diff(rank[by_rank])) + 1
    for pos in np.split(by_rank, bounds):
        yield order[pos], left[pos]
