"""How rows come into the native Half-Space Trees: arrays with named columns, and river's dicts.

`_as_matrix` puts the columns of an array in the trees' (sorted) feature order, checking the names
once per column order.  `learn_one` / `score_one` take river's dicts: complete rows go through the
vectorised path of `detectors.hst.HalfSpaceTrees`; a row that lacks some of the trees' features
takes river's route at a split on a missing feature: towards the child with the larger mass of the
current window (l_mass, before this row), the left one on a tie.
"""
from __future__ import annotations

from typing import Any, Hashable, Mapping, Sequence

import numpy as np

from .hst_core import node_masses


class RowAPI:
    """Input side of `HalfSpaceTrees` (a mixin: it uses the model's arrays)."""

    def _as_matrix(self, X, features: Sequence[Hashable] | None) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2:
            raise ValueError(f"HalfSpaceTrees: X must be 2-D (rows, features), got shape {X.shape}")
        if features is None:
            if self.features is None:
                self._build(range(X.shape[1]))
            if X.shape[1] != len(self.features):
                raise ValueError(
                    f"HalfSpaceTrees: X has {X.shape[1]} columns, the trees use {len(self.features)} "
                    f"features {self.features}; pass features=[...] to name the columns"
                )
            return X  # columns are self.features, in that (sorted) order
        key = tuple(features)
        if len(key) != X.shape[1]:
            raise ValueError(f"HalfSpaceTrees: {len(key)} feature names for {X.shape[1]} columns")
        if key != self._columns[0]:  # the column order of the last call, checked once
            if self.features is None:
                self._build(key)
            pos = {f: j for j, f in enumerate(key)}
            missing = [f for f in self.features if f not in pos]
            if missing:
                raise ValueError(f"HalfSpaceTrees: X lacks features {missing}; use learn_one for sparse rows")
            take = [pos[f] for f in self.features]
            self._columns = (key, None if take == list(range(X.shape[1])) else np.array(take, dtype=np.intp))
        take = self._columns[1]
        return X if take is None else X.T.take(take, axis=0).T  # feature-major, as the tree walk reads it

    @property
    def _l_mass(self) -> np.ndarray:
        """river's l_mass of every node (this window's visits), derived from the leaf counts."""
        return node_masses(self._l_leaf)

    @property
    def _r_mass(self) -> np.ndarray:
        """river's r_mass of every node (the last complete window's), derived from its leaf counts."""
        return node_masses(self._r_leaf, self._r_leaf.dtype)

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
        size_limit, score, l_mass, r_mass = self.size_limit, 0, self._l_mass, self._r_mass
        for t in range(self.n_trees):
            node, depth_pow = 0, 1
            for _ in range(self.height):
                r = int(r_mass[t, node])
                score += r * depth_pow
                if r < size_limit:
                    break
                node = self._next(t, node, x, l_mass)
                depth_pow <<= 1
            else:
                score += int(r_mass[t, node]) * depth_pow
        return 1 - float(score) / self._max_score

    def _next(self, t: int, node: int, x: Mapping, l_mass: np.ndarray) -> int:
        name = self.features[self._feature[t, node]]
        left, right = 2 * node + 1, 2 * node + 2
        if name not in x:
            return right if l_mass[t, left] < l_mass[t, right] else left
        return left if x[name] < self._threshold[t, node] else right
