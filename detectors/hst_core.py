"""Vectorised kernels of the native Half-Space Trees: tree walk, leaf counts, node masses, leaf scores.

Layout (see `detectors.hst`): tree `t` of a forest with leaves per tree `L = 2**height` keeps its
internal nodes in heap order in row `t` of a `(T, L)` array (the last column is padding), so node
`i` of tree `t` has the flat index `g = t * L + i`, and its children `2i + 1`, `2i + 2` have the flat
indices `2 g + (2 - t L) - 1` and `2 g + (2 - t L)`.  A walk of `height` levels ends on the flat
leaf index `p = t * L + leaf` (the deepest step folds the `- (L - 1)` of the leaf numbering into
its step), which indexes the flat `(T * L)` leaf-count and leaf-score arrays directly.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=32)
def layout(n_trees: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat index tables of a forest's walk, shared and read-only (they depend on its shape only).

    `child[g]` is the right child of internal node `g` (the left one is `child[g] - 1`), `last[g]`
    the flat leaf index of that right child when `g` is on the deepest internal level, and
    `top` (T, 1) the right child of each root (its flat leaf index when height is 1).
    """
    L = 2**height
    root = np.arange(n_trees, dtype=np.intp) * L
    child = 2 * np.arange(n_trees * L, dtype=np.intp) - np.repeat(root, L) + 2
    last = child - (L - 1)
    top = (root + 2 - (L - 1 if height == 1 else 0))[:, None]
    for a in (child, last, top):
        a.flags.writeable = False
    return child, last, top


def walk(feat: np.ndarray, thr: np.ndarray, X: np.ndarray, height: int) -> np.ndarray:
    """Flat leaf index `t * L + leaf` that each row of `X` (n, F) reaches in each tree: (T, n) intp.

    `feat` (T, L) holds the split feature and `thr` (T, L) float64 the threshold of every internal
    node.  A row goes left where ``x[feature] < threshold``; NaN is not < anything, so it goes
    right, as in river.  Seven numpy operations per level below the roots (deciding the top two or
    three levels for every row at once instead was measured slower).
    """
    T, L = thr.shape
    n = X.shape[0]
    if height == 0:  # a single leaf per tree
        return np.repeat(np.arange(T, dtype=np.intp)[:, None], n, axis=1)
    child, last, top = layout(T, height)
    Xt = np.ascontiguousarray(X.T)  # (F, n): a column per feature, so the gathers below run along rows
    g = top - (Xt.take(feat[:, 0], axis=0) < thr[:, :1])  # level 0: every row starts at the roots
    if height == 1:
        return g
    xf, thr = Xt.ravel(), thr.ravel()
    col = feat.ravel().astype(np.intp)
    col *= n  # where the column of each node's split feature starts in xf
    rows = np.arange(n, dtype=np.intp)
    for d in range(1, height):
        c = col.take(g)
        c += rows
        left = xf.take(c) < thr.take(g)
        g = (child if d < height - 1 else last).take(g)
        g -= left
    return g


def leaf_counts(p: np.ndarray, cells: int) -> np.ndarray:
    """How many of the flat leaf indices `p` fall on each of `cells` leaves: (cells,) int64."""
    return np.bincount(p.ravel(), minlength=cells)


@lru_cache(maxsize=16)
def _depth(height: int) -> np.ndarray:
    """Depth of every node of a tree in heap order, read-only."""
    depth = np.repeat(np.arange(height + 1, dtype=np.int64), 2 ** np.arange(height + 1))
    depth.flags.writeable = False
    return depth


def node_masses(leaf: np.ndarray, dtype=np.int64) -> np.ndarray:
    """Node masses (..., T, 2L - 1) in heap order from leaf counts (..., T, L): every path ends in a
    leaf, so a node's mass is the sum of its children's, level by level from the leaves up."""
    levels = [leaf.astype(dtype)]
    while levels[-1].shape[-1] > 1:
        m = levels[-1]
        levels.append(m[..., 0::2] + m[..., 1::2])
    return np.concatenate(levels[::-1], axis=-1)


def leaf_scores(r_mass: np.ndarray, size_limit: float, dtype=np.int64) -> np.ndarray:
    """Per tree and leaf, the score of a walk that ends there under reference masses: (..., T, L).

    river's walk adds ``r_mass * 2**depth`` at each node and stops below the first node whose
    reference mass is under `size_limit`, so within a window the score depends only on the leaf.
    A node's mass is the sum of its children's, so a node is reached iff its parent's mass is at
    least `size_limit` (then so is every ancestor's): its term counts iff that holds, and a leaf's
    score is the sum of the terms on its path, summed level by level from the root down.
    """
    height = (r_mass.shape[-1] + 1).bit_length() - 2
    r = r_mass.astype(dtype, copy=False)
    term = r << _depth(height).astype(dtype)
    term[..., 1:] *= np.repeat(r[..., :2**height - 1] >= size_limit, 2, axis=-1)  # nodes 1, 2, ...: parents 0, 0, 1, 1, ...
    total = term[..., :1]
    for d in range(1, height + 1):
        lo = 2**d - 1
        total = np.repeat(total, 2, axis=-1) + term[..., lo:2 * lo + 1]
    return total
