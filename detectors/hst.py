"""Native Half-Space Trees: river's algorithm with numpy arrays instead of node objects.

`HalfSpaceTrees` takes the same constructor parameters as `river.anomaly.HalfSpaceTrees`
(`n_trees, height, window_size, limits, seed`), builds the same random trees from the same seed
(it replays river's calls on a `random.Random(seed)`), and returns the same scores, bit for bit.

Storage: every tree is a complete binary tree in heap order (node `i` has children `2i+1` and
`2i+2`), so a model is four small arrays: split feature and threshold per internal node, and the
latest ("l") and reference ("r") mass per node.  Inside one window the score of a row depends only on
the reference masses frozen at the last window boundary, so a micro-batch is scored and learned
with a handful of numpy operations per window (`score_learn_many`).
"""
from __future__ import annotations

import random
from typing import Any, Hashable, Iterable, Mapping, Sequence

import numpy as np

from .hst_build import build_trees

__all__ = ["HalfSpaceTrees"]

class HalfSpaceTrees:
    """Half-Space Trees anomaly detector, score-equal to river's, vectorised per window.

    Parameters
    ----------
    n_trees
        Number of trees.
    height
        Height of each tree (a tree has ``2 ** (height + 1) - 1`` nodes).
    window_size
        Observations per window; the reference masses are swapped in at each window boundary.
    limits
        ``{feature: (low, high)}``; features not listed are assumed to lie in ``[0, 1]``.
    seed
        Random seed; the same seed gives the same trees as river's ``HalfSpaceTrees``.

    Examples
    --------
    >>> import numpy as np
    >>> hst = HalfSpaceTrees(n_trees=5, height=3, window_size=3, seed=42)
    >>> X = np.array([[0.5], [0.45], [0.43], [0.44], [0.445], [0.45], [0.0]])
    >>> hst.score_learn_many(X[:3]).tolist()   # first window: warming up, scores are 0
    [0.0, 0.0, 0.0]
    >>> [round(float(s), 3) for s in hst.score_learn_many(X[3:])]
    [0.107, 0.107, 0.071, 0.853]

    The dict API matches river's (features are the dict keys, trees are built on the first call):

    >>> hst = HalfSpaceTrees(n_trees=5, height=3, window_size=3, seed=42)
    >>> for x in [0.5, 0.45, 0.43, 0.44]:
    ...     hst.learn_one({"x": x})
    >>> round(hst.score_one({"x": 0.0}), 3)
    0.853
    """

    def __init__(
        self,
        n_trees: int = 10,
        height: int = 8,
        window_size: int = 250,
        limits: Mapping[Hashable, tuple[float, float]] | None = None,
        seed: int | None = None,
    ):
        if n_trees < 1 or height < 0 or window_size < 1:
            raise ValueError(
                f"HalfSpaceTrees: need n_trees >= 1, height >= 0, window_size >= 1; got "
                f"n_trees={n_trees}, height={height}, window_size={window_size}"
            )
        self.n_trees = int(n_trees)
        self.height = int(height)
        self.window_size = int(window_size)
        self.limits = dict(limits or {})
        self.seed = seed
        self._rng = random.Random(seed)
        self.features: list | None = None  # sorted feature names, set when the trees are built
        self._index: dict = {}
        self._feature: np.ndarray | None = None  # (T, n_internal) index into self.features
        self._threshold: np.ndarray | None = None  # (T, n_internal) float64
        self._l_leaf: np.ndarray | None = None  # (T, 2**h): this window's count per leaf
        self._r_mass: np.ndarray | None = None  # (T, n_nodes)
        self.counter = 0
        self._first_window = True
        self._table: np.ndarray | None = None  # leaf score table of the current window (derived)
        self._max_windows = 8  # windows handled by one vectorised step (bounded temporaries)

    # ------------------------------------------------------------------ properties
    @property
    def size_limit(self) -> float:
        """Reference mass under which the scoring walk stops (0.1 * window_size, as in the paper)."""
        return 0.1 * self.window_size

    @property
    def _max_score(self) -> int:
        return self.n_trees * self.window_size * (2 ** (self.height + 1) - 1)

    @property
    def n_nodes(self) -> int:
        return 2 ** (self.height + 1) - 1

    @property
    def warming_up(self) -> bool:
        """True until the first window is complete (scores are 0 until then, as in river)."""
        return self._first_window

    @property
    def nbytes(self) -> int:
        """Bytes held by the tree arrays."""
        arrays = (self._feature, self._threshold, self._l_leaf, self._r_mass)
        return sum(a.nbytes for a in arrays if a is not None)

    # ------------------------------------------------------------------ construction
    def _build(self, features: Iterable[Hashable]) -> None:
        """Build the trees river would build from the same seed (see `detectors.hst_build`)."""
        names = sorted(features)
        if not names:
            raise ValueError("HalfSpaceTrees: cannot build trees without any feature")
        self.features = names
        self._index = {f: i for i, f in enumerate(names)}
        lim = np.array([tuple(self.limits.get(f, (0.0, 1.0))) for f in names], dtype=np.float64)
        self._feature, self._threshold = build_trees(lim, self.n_trees, self.height, self._rng)
        mdt = np.uint16 if self.window_size < 2**16 else np.uint32
        self._l_leaf = np.zeros((self.n_trees, 2**self.height), dtype=mdt)
        self._r_mass = np.zeros((self.n_trees, self.n_nodes), dtype=mdt)

    # ------------------------------------------------------------------ vectorised core
    def _as_matrix(self, X, features: Sequence[Hashable] | None) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2:
            raise ValueError(f"HalfSpaceTrees: X must be 2-D (rows, features), got shape {X.shape}")
        names = list(features) if features is not None else None
        if names is not None and len(names) != X.shape[1]:
            raise ValueError(f"HalfSpaceTrees: {len(names)} feature names for {X.shape[1]} columns")
        if self.features is None:
            self._build(names if names is not None else range(X.shape[1]))
        if names is None:
            if X.shape[1] != len(self.features):
                raise ValueError(
                    f"HalfSpaceTrees: X has {X.shape[1]} columns, the trees use {len(self.features)} "
                    f"features {self.features}; pass features=[...] to name the columns"
                )
            return X  # columns are self.features, in that (sorted) order
        pos = {f: j for j, f in enumerate(names)}
        missing = [f for f in self.features if f not in pos]
        if missing:
            raise ValueError(f"HalfSpaceTrees: X lacks features {missing}; use learn_one for sparse rows")
        return X[:, [pos[f] for f in self.features]]

    def _leaves(self, X: np.ndarray, chunk: int = 2048) -> np.ndarray:
        """Leaf (heap index) that each row reaches in each tree: (T, n).  Every path ends in a leaf."""
        if X.shape[0] > chunk:  # cache-sized pieces: about 2x faster on big batches
            return np.concatenate([self._leaves(X[i:i + chunk]) for i in range(0, X.shape[0], chunk)], axis=1)
        n = X.shape[0]
        T, h = self.n_trees, self.height
        col_start = self._feature.ravel().astype(np.intp) * n  # where each split feature's column starts
        thr = self._threshold.ravel()
        Xt = np.ascontiguousarray(X.T).ravel()
        offset = (np.arange(T, dtype=np.intp) * (2**h - 1))[:, None]  # tree t's internal nodes start here
        rows = np.arange(n, dtype=np.intp)[None, :]
        g = np.repeat(offset, n, axis=1)  # g = offset_t + node: the roots
        step = 2 - offset  # child: offset_t + 2 node + 2 - left = 2 g + step_t - left
        for _ in range(h):
            c = col_start.take(g)
            c += rows
            left = Xt.take(c) < thr.take(g)  # NaN is not < threshold: it goes right, as in river
            g *= 2
            g += step
            g -= left
        return g - offset

    def _leaf_scores(self, r_mass: np.ndarray | None = None) -> np.ndarray:
        """Per tree and leaf, the score of a walk that ends there under reference masses: (..., T, 2**h).

        The walk adds r_mass * 2**depth at each node and stops below the first node whose reference
        mass is under size_limit, so within a window the score depends only on the leaf reached.
        Without `r_mass`, the table of the current window (cached until the next window boundary).
        """
        if r_mass is None:
            if self._table is None:
                table = self._leaf_scores(self._r_mass)
                small = self.window_size * self.n_nodes < 2**31  # the largest possible leaf score
                self._table = table.astype(np.int32) if small else table  # half the bytes per model
            return self._table
        r = r_mass.astype(np.int64)
        total = r[..., :1]
        go_on = r[..., :1] >= self.size_limit  # the walk continues below this node
        for d in range(1, self.height + 1):  # level by level: 2**(h+1) - 1 cells per tree in all
            lo = 2**d - 1
            level = r[..., lo:2 * lo + 1]
            alive = np.repeat(go_on, 2, axis=-1)
            total = np.repeat(total, 2, axis=-1) + np.where(alive, level << d, 0)
            go_on = alive & (level >= self.size_limit)
        return total

    def _score_with(self, table: np.ndarray, leaves: np.ndarray) -> np.ndarray:
        """Scores of rows whose leaves are (T, m), or (k, T, m) with one table per window (k, T, L)."""
        L = table.shape[-1]
        flat = leaves - (L - 1) + (np.arange(table.size // L, dtype=np.intp) * L).reshape(table.shape[:-1] + (1,))
        total = table.ravel().take(flat).sum(axis=-2)
        return 1.0 - total.astype(np.float64) / self._max_score

    def _score_leaves(self, leaves: np.ndarray) -> np.ndarray:
        if self._first_window:
            return np.zeros(leaves.shape[-1], dtype=np.float64)
        return self._score_with(self._leaf_scores(), leaves)

    def _leaf_counts(self, leaves: np.ndarray) -> np.ndarray:
        """How many rows reached each leaf: (..., T, 2**h) from leaves (..., T, m)."""
        L = 2**self.height
        lead = leaves.shape[:-1]
        cells = int(np.prod(lead))
        flat = leaves - (L - 1) + (np.arange(cells, dtype=np.intp) * L).reshape(lead + (1,))
        return np.bincount(flat.ravel(), minlength=cells * L).reshape(lead + (L,))

    def _tree(self, counts: np.ndarray) -> np.ndarray:
        """Node masses (..., T, n_nodes) from leaf counts: every path ends in a leaf, so a node's
        mass is the sum over the leaves below it."""
        mass = np.empty(counts.shape[:-1] + (self.n_nodes,), dtype=np.int64)
        c = counts.astype(np.int64)
        for d in range(self.height, -1, -1):
            mass[..., 2**d - 1: 2 ** (d + 1) - 1] = c
            c = c[..., 0::2] + c[..., 1::2]
        return mass

    @property
    def _l_mass(self) -> np.ndarray:
        """river's l_mass of every node (this window's visits), derived from the leaf counts."""
        return self._tree(self._l_leaf)

    def _learn_leaves(self, leaves: np.ndarray) -> None:
        """Learn rows: one more visit for every node on their paths (kept as leaf counts)."""
        self._l_leaf += self._leaf_counts(leaves).astype(self._l_leaf.dtype)

    def _pivot(self) -> None:
        self._r_mass = self._tree(self._l_leaf).astype(self._l_leaf.dtype)
        self._l_leaf = np.zeros_like(self._l_leaf)
        self._table = None
        self._first_window = False
        self.counter = 0

    def _run(self, X: np.ndarray, score: bool, learn: bool) -> np.ndarray | None:
        n, W = X.shape[0], self.window_size
        out = np.empty(n, dtype=np.float64) if score else None
        if n == 0:
            return out
        leaves = self._leaves(X)
        if not learn:
            out[:] = self._score_leaves(leaves)
            return out
        pos = 0
        while pos < n:
            if self.counter == 0 and n - pos >= 2 * W:  # whole windows at once
                pos = self._run_windows(leaves, pos, min((n - pos) // W, self._max_windows), out)
                continue
            end = min(n, pos + W - self.counter)
            seg = leaves[:, pos:end]
            if score:
                out[pos:end] = self._score_leaves(seg)
            self._learn_leaves(seg)
            self.counter += end - pos
            if self.counter == W:
                self._pivot()
            pos = end
        return out

    def _run_windows(self, leaves: np.ndarray, pos: int, k: int, out: np.ndarray | None) -> int:
        """Score and learn k complete windows starting at a window boundary.

        Window j is scored with the masses learned in window j - 1 (the first with the current
        reference masses): the masses of all k windows come from one bincount.
        """
        T, W = self.n_trees, self.window_size
        block = leaves[:, pos:pos + k * W].reshape(T, k, W).transpose(1, 0, 2)  # (k, T, W)
        counts = self._leaf_counts(block)  # (k, T, leaves)
        if out is not None:
            scores = np.zeros((k, W))
            if not self._first_window:
                scores[0] = self._score_leaves(block[0])
            scores[1:] = self._score_with(self._leaf_scores(self._tree(counts[:-1])), block[1:])
            out[pos:pos + k * W] = scores.ravel()
        self._l_leaf += counts[-1].astype(self._l_leaf.dtype)  # empty at a boundary
        self._pivot()
        return pos + k * W

    # ------------------------------------------------------------------ public API
    def score_learn_many(self, X, features: Sequence[Hashable] | None = None) -> np.ndarray:
        """Score each row of the 2-D array `X`, then learn it, in order; return the scores.

        Equal to ``[(hst.score_one(x), hst.learn_one(x))[0] for x in rows]`` with river.
        Columns are `features` (names), or the features the trees were built with, or 0..d-1.
        """
        return self._run(self._as_matrix(X, features), score=True, learn=True)

    def learn_many(self, X, features: Sequence[Hashable] | None = None) -> None:
        """Learn every row of `X` in order."""
        self._run(self._as_matrix(X, features), score=False, learn=True)

    def score_many(self, X, features: Sequence[Hashable] | None = None) -> np.ndarray:
        """Score every row of `X` with the current model (no learning)."""
        if self.features is None:
            return np.zeros(np.asarray(X).shape[0], dtype=np.float64)
        return self._run(self._as_matrix(X, features), score=True, learn=False)

    def learn_one(self, x: Mapping[Hashable, Any]) -> None:
        """Learn one observation given as ``{feature: value}`` (river's API)."""
        if self.features is None:
            self._build(x.keys())
        if all(f in x for f in self.features):
            self._run(np.array([[x[f] for f in self.features]], dtype=np.float64), False, True)
            return
        l_mass = self._l_mass  # sparse row: river routes a missing feature by l_mass (before this row)
        for t in range(self.n_trees):
            node = 0
            for _ in range(self.height):
                node = self._next(t, node, x, l_mass)
            self._l_leaf[t, node - (2**self.height - 1)] += 1  # and counts it on every node of the path
        self.counter += 1
        if self.counter == self.window_size:
            self._pivot()

    def score_one(self, x: Mapping[Hashable, Any]) -> float:
        """Anomaly score in [0, 1] of one observation (0 during the first window, as in river)."""
        if self._first_window or self.features is None:
            return 0.0
        if all(f in x for f in self.features):
            row = np.array([[x[f] for f in self.features]], dtype=np.float64)
            return float(self._run(row, True, False)[0])
        size_limit, score, l_mass = self.size_limit, 0, self._l_mass
        for t in range(self.n_trees):
            node, depth_pow = 0, 1
            for _ in range(self.height):
                r = int(self._r_mass[t, node])
                score += r * depth_pow
                if r < size_limit:
                    break
                node = self._next(t, node, x, l_mass)
                depth_pow <<= 1
            else:
                score += int(self._r_mass[t, node]) * depth_pow
        return 1 - float(score) / self._max_score

    def _next(self, t: int, node: int, x: Mapping, l_mass: np.ndarray) -> int:
        name = self.features[self._feature[t, node]]
        left, right = 2 * node + 1, 2 * node + 2
        if name not in x:
            return right if l_mass[t, left] < l_mass[t, right] else left
        return left if x[name] < self._threshold[t, node] else right

    # ------------------------------------------------------------------ state
    def snapshot(self) -> dict:
        """Picklable state; `HalfSpaceTrees.from_snapshot(s)` gives an identical model."""
        return {
            "params": dict(n_trees=self.n_trees, height=self.height, window_size=self.window_size,
                           limits=dict(self.limits), seed=self.seed),
            "rng": self._rng.getstate(),
            "features": None if self.features is None else list(self.features),
            "arrays": None if self.features is None else
            tuple(a.copy() for a in (self._feature, self._threshold, self._l_leaf, self._r_mass)),
            "counter": self.counter,
            "first_window": self._first_window,
        }

    def restore(self, state: dict) -> None:
        self.__init__(**state["params"])
        self._rng.setstate(state["rng"])
        if state["features"] is not None:
            self.features = list(state["features"])
            self._index = {f: i for i, f in enumerate(self.features)}
            self._feature, self._threshold, self._l_leaf, self._r_mass = (
                a.copy() for a in state["arrays"])
        self.counter = state["counter"]
        self._first_window = state["first_window"]
        self._table = None

    @classmethod
    def from_snapshot(cls, state: dict) -> "HalfSpaceTrees":
        model = cls.__new__(cls)
        model.restore(state)
        return model
