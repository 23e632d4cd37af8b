"""Native Half-Space Trees: river's algorithm with numpy arrays instead of node objects.

`HalfSpaceTrees` takes the same constructor parameters as `river.anomaly.HalfSpaceTrees`
(`n_trees, height, window_size, limits, seed`), builds the same random trees from the same seed
(it replays river's calls on a `random.Random(seed)`), and returns the same scores, bit for bit.

Storage: every tree is a complete binary tree in heap order (node `i` has children `2i+1` and
`2i+2`), so a model is a few small arrays: split feature and threshold per internal node, and the
count per leaf of this window ("l") and of the last complete one ("r"); every path ends in a leaf,
so a node's mass is the sum of the leaf counts below it.  Inside one window the score of a row
depends only on the leaf it reaches (the reference masses are frozen at the last window boundary),
so a per-window table of leaf scores, computed once per window, scores a micro-batch with one
gather, and one bincount learns it (`score_learn_many`; the kernels are in `detectors.hst_core`).
"""
from __future__ import annotations

import random
from typing import Hashable, Iterable, Mapping, Sequence

import numpy as np

from .hst_build import build_trees
from .hst_core import leaf_counts, leaf_scores, node_masses, walk
from .hst_rows import RowAPI

__all__ = ["HalfSpaceTrees"]

class HalfSpaceTrees(RowAPI):
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
        self._feature: np.ndarray | None = None  # (T, 2**h) index into self.features, heap order
        self._threshold: np.ndarray | None = None  # (T, 2**h) float64 (last column: padding)
        self._l_leaf: np.ndarray | None = None  # (T, 2**h): this window's count per leaf
        self._r_leaf: np.ndarray | None = None  # (T, 2**h): the last complete window's count per leaf
        self.counter = 0
        self._first_window = True
        self._table: np.ndarray | None = None  # flat leaf scores of the current window (derived)
        self._columns: tuple = ((), None)  # column names of the last call, and how to reorder them
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
        """Bytes held by the model's arrays (trees, leaf counts and this window's leaf scores)."""
        arrays = (self._feature, self._threshold, self._l_leaf, self._r_leaf, self._table)
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
        self._set_trees(*build_trees(lim, self.n_trees, self.height, self._rng))
        mdt = np.uint16 if self.window_size < 2**16 else np.uint32
        self._l_leaf = np.zeros((self.n_trees, 2**self.height), dtype=mdt)
        self._r_leaf = np.zeros_like(self._l_leaf)

    def _set_trees(self, feat: np.ndarray, thr: np.ndarray) -> None:
        """Keep split features and thresholds as (T, 2**height): heap order, last column padding."""
        L = 2**self.height
        k = min(feat.shape[1], L)
        self._feature = np.zeros((self.n_trees, L), dtype=feat.dtype)
        self._threshold = np.zeros((self.n_trees, L), dtype=np.float64)
        self._feature[:, :k], self._threshold[:, :k] = feat[:, :k], thr[:, :k]

    # ------------------------------------------------------------------ vectorised core
    def _leaves(self, X: np.ndarray, chunk: int = 2048) -> np.ndarray:
        """Flat leaf index (tree * 2**height + leaf) that each row reaches in each tree: (T, n)."""
        if X.shape[0] > chunk:  # cache-sized pieces: faster on big batches
            return np.concatenate([self._leaves(X[i:i + chunk]) for i in range(0, X.shape[0], chunk)], axis=1)
        return walk(self._feature, self._threshold, X, self.height)

    def _leaf_table(self) -> np.ndarray:
        """Flat (T * 2**height) leaf scores of the current window, computed once per window."""
        if self._table is None:
            small = self.window_size * self.n_nodes < 2**31  # the largest possible leaf score
            dtype = np.int32 if small else np.int64  # int32: half the bytes per model
            self._table = leaf_scores(node_masses(self._r_leaf, dtype), self.size_limit, dtype).ravel()
        return self._table

    def _score_with(self, table: np.ndarray, p: np.ndarray) -> np.ndarray:
        """Scores of rows whose flat leaf indices into `table` are `p` (..., T, m): sum over trees."""
        total = table.take(p).sum(axis=-2)
        return 1.0 - total / self._max_score  # integer sum, then river's float operations

    def _score_leaves(self, p: np.ndarray) -> np.ndarray:
        if self._first_window:
            return np.zeros(p.shape[-1], dtype=np.float64)
        return self._score_with(self._leaf_table(), p)

    def _learn_leaves(self, p: np.ndarray) -> None:
        """Learn rows: one more visit for every node on their paths (kept as leaf counts)."""
        flat = self._l_leaf.reshape(-1)
        np.add(flat, leaf_counts(p, flat.size), out=flat, casting="unsafe")

    def _pivot(self) -> None:
        self._r_leaf, self._l_leaf = self._l_leaf, np.zeros_like(self._l_leaf)
        self._table = None
        self._first_window = False
        self.counter = 0

    def _run(self, X: np.ndarray, score: bool, learn: bool) -> np.ndarray | None:
        n, W = X.shape[0], self.window_size
        if n == 0:
            return np.empty(0, dtype=np.float64) if score else None
        p = self._leaves(X)
        if not learn:
            return self._score_leaves(p)
        if self.counter + n <= W:  # the common case: no window boundary inside the batch
            out = self._score_leaves(p) if score else None
            self._learn_leaves(p)
            self.counter += n
            if self.counter == W:
                self._pivot()
            return out
        out = np.empty(n, dtype=np.float64) if score else None
        pos = 0
        while pos < n:
            if self.counter == 0 and n - pos >= 2 * W:  # whole windows at once
                pos = self._run_windows(p, pos, min((n - pos) // W, self._max_windows), out)
                continue
            end = min(n, pos + W - self.counter)
            seg = p[:, pos:end]
            if score:
                out[pos:end] = self._score_leaves(seg)
            self._learn_leaves(seg)
            self.counter += end - pos
            if self.counter == W:
                self._pivot()
            pos = end
        return out

    def _run_windows(self, p: np.ndarray, pos: int, k: int, out: np.ndarray | None) -> int:
        """Score and learn k complete windows starting at a window boundary.

        Window j is scored with the masses learned in window j - 1 (the first with the current
        reference masses): the leaf counts of all k windows come from one bincount.
        """
        T, W, L = self.n_trees, self.window_size, 2**self.height
        block = p[:, pos:pos + k * W].reshape(T, k, W).transpose(1, 0, 2)  # (k, T, W)
        cell = (np.arange(k, dtype=np.intp) * (T * L))[:, None, None]  # window j's cells start here
        counts = leaf_counts(block + cell, k * T * L).reshape(k, T, L)
        if out is not None:
            scores = np.zeros((k, W))
            if not self._first_window:
                scores[0] = self._score_leaves(block[0])
            tables = leaf_scores(node_masses(counts[:-1]), self.size_limit).ravel()
            scores[1:] = self._score_with(tables, block[1:] + cell[:-1])
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

    # ------------------------------------------------------------------ state
    def snapshot(self) -> dict:
        """Plain-data state (numbers, arrays, the seed generator's state); `from_snapshot(s)` gives an identical model."""
        n_int = max(2**self.height - 1, 1)  # trees as (T, internal nodes), without the padding
        return {
            "params": dict(n_trees=self.n_trees, height=self.height, window_size=self.window_size,
                           limits=dict(self.limits), seed=self.seed),
            "rng": self._rng.getstate(),
            "features": None if self.features is None else list(self.features),
            "arrays": None if self.features is None else tuple(a.copy() for a in (
                self._feature[:, :n_int], self._threshold[:, :n_int], self._l_leaf, self._r_mass)),  # river's r_mass per node
            "counter": self.counter,
            "first_window": self._first_window,
        }

    def restore(self, state: dict) -> None:
        self.__init__(**state["params"])
        self._rng.setstate(state["rng"])
        if state["features"] is not None:
            self.features = list(state["features"])
            self._index = {f: i for i, f in enumerate(self.features)}
            feat, thr, l_leaf, r_mass = state["arrays"]
            self._set_trees(feat, thr)
            self._l_leaf, self._r_leaf = l_leaf.copy(), r_mass[:, -l_leaf.shape[1]:].copy()
        self.counter = state["counter"]
        self._first_window = state["first_window"]
        self._table = None

    @classmethod
    def from_snapshot(cls, state: dict) -> "HalfSpaceTrees":
        model = cls.__new__(cls)
        model.restore(state)
        return model
