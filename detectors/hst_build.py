"""Tree construction for the native Half-Space Trees: the same trees as river's, from the same seed."""
from __future__ import annotations

import random

import numpy as np

PADDING = 0.15  # river.anomaly.hst calls make_padded_tree(padding=0.15)


def build_trees(limits: np.ndarray, n_trees: int, height: int, rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
    """Split feature and threshold of every internal node, (n_trees, 2**height - 1) each, in heap order.

    river's make_padded_tree draws, per internal node in pre-order, one `random()` for the weighted
    feature choice (`rng.choices`: bisect on the running sum of the limit widths) and one for the
    split (`rng.uniform` inside the padded range).  We draw the same numbers in the same order, then
    apply the same float operations to whole tree levels at once.  `limits` is (features, 2).
    """
    T, h, F = n_trees, height, len(limits)
    n_int = 2**h - 1
    draws = _randoms(rng, 2 * n_int * T).reshape(T, n_int, 2)
    feat = np.zeros((T, max(n_int, 1)), dtype=np.intp)
    thr = np.zeros((T, max(n_int, 1)), dtype=np.float64)
    lo = np.broadcast_to(limits[:, 0], (T, 1, F)).copy()  # limits of every node of the current level
    hi = np.broadcast_to(limits[:, 1], (T, 1, F)).copy()
    pre = np.zeros(1, dtype=np.intp)  # pre-order rank of each node of the level among internal nodes
    for d in range(h):
        cum = np.add.accumulate(hi - lo, axis=2)  # left to right, like itertools.accumulate
        total = cum[..., -1] + 0.0
        if (total <= 0).any():
            raise ValueError("HalfSpaceTrees: every feature's limits are empty (high <= low)")
        u = draws[:, pre, 0] * total
        on = (cum[..., : F - 1] <= u[..., None]).sum(axis=-1)  # bisect_right(cum, u, 0, F - 1)
        a = np.take_along_axis(lo, on[..., None], axis=2)[..., 0]
        b = np.take_along_axis(hi, on[..., None], axis=2)[..., 0]
        low, high = a + PADDING * (b - a), b - PADDING * (b - a)
        at = low + (high - low) * draws[:, pre, 1]
        heap = np.arange(2**d - 1, 2 ** (d + 1) - 1)
        feat[:, heap], thr[:, heap] = on, at
        lo, hi = np.repeat(lo, 2, axis=1), np.repeat(hi, 2, axis=1)
        tt, mm = np.meshgrid(np.arange(T), np.arange(len(heap)), indexing="ij")
        hi[tt, 2 * mm, on] = at  # left child: [low, at)
        lo[tt, 2 * mm + 1, on] = at  # right child: [at, high)
        child = np.empty(2 * len(pre), dtype=np.intp)
        child[0::2], child[1::2] = pre + 1, pre + 2 ** (h - d - 1)
        pre = child
    return feat.astype(np.uint8 if F <= 256 else np.int32), thr


def _randoms(rng: random.Random, n: int) -> np.ndarray:
    """`[rng.random() for _ in range(n)]`, drawn in one call, leaving `rng` in the same state.

    CPython's `random()` takes two 32-bit Mersenne Twister outputs a, b and returns
    ((a >> 5) * 2**26 + (b >> 6)) / 2**53; `getrandbits(64 n)` returns the same 2n outputs,
    least significant word first.  (Checked against `rng.random()` in the tests.)
    """
    words = np.frombuffer(rng.getrandbits(64 * n).to_bytes(8 * n, "little"), dtype="<u4") if n else np.zeros(0, "<u4")
    a, b = (words[0::2] >> 5).astype(np.float64), (words[1::2] >> 6).astype(np.float64)
    return (a * 67108864.0 + b) * (1.0 / 9007199254740992.0)
