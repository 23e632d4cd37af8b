"""river's online anomaly detectors behind our `Detector` protocol (the only module that imports river.anomaly).

river 0.26 offers HalfSpaceTrees, LODA, LocalOutlierFactor, OneClassSVM, StandardAbsoluteDeviation,
GaussianScorer and PredictiveAnomalyDetection.  LocalOutlierFactor is left out: it keeps every
sample it has seen and rescans neighbourhoods, so memory and time grow without bound on a stream.
The univariate ones (SAD, GaussianScorer, PAD) get one model per field; the largest field score wins.
These run row by row (river's API is per row); prefer the native `hst` / `mad` on a busy gateway.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from river import anomaly, compose, linear_model, preprocessing

from .base import Identity, RobustNormalizer, SegmentedDetector, Squash

__all__ = ["RiverHST", "RiverLODA", "RiverOneClassSVM", "RiverSAD", "RiverGaussian", "RiverPAD"]


class _RowWise(SegmentedDetector):
    """Feeds river one row (as a dict) at a time; warming for the first `grace_period` learned rows."""

    def __init__(self, fields: Sequence[str], grace_period: int):
        super().__init__(fields)
        self.grace_period = grace_period
        self.seen = 0

    def _warming(self) -> bool:
        return self.seen < self.grace_period

    def _score(self, X: np.ndarray) -> np.ndarray:
        return np.array([self._score_one(dict(zip(self.fields, row.tolist()))) for row in X])

    def _learn(self, X: np.ndarray, mask: np.ndarray) -> None:
        for row in X[mask]:
            self._learn_one(dict(zip(self.fields, row.tolist())))
            self.seen += 1


class RiverHST(_RowWise):
    """river's HalfSpaceTrees after river's online MinMaxScaler (the scaling HST needs)."""

    def __init__(self, fields: Sequence[str], n_trees: int = 10, height: int = 8, window_size: int = 250,
                 seed: int = 0):
        super().__init__(fields, grace_period=window_size)
        self.norm = RobustNormalizer(upper=1.0)
        self.model = compose.Pipeline(preprocessing.MinMaxScaler(),
                                      anomaly.HalfSpaceTrees(n_trees=n_trees, height=height,
                                                             window_size=window_size, seed=seed))

    def _score_one(self, x):
        return self.model.score_one(x)

    def _learn_one(self, x):
        self.model.learn_one(x)


class RiverLODA(_RowWise):
    """river's LODA (random projections + streaming histograms) on standardised fields."""

    def __init__(self, fields: Sequence[str], n_bins: int = 10, n_random_cuts: int = 100, seed: int = 0,
                 grace_period: int = 100):
        super().__init__(fields, grace_period)
        self.model = compose.Pipeline(preprocessing.StandardScaler(),
                                      anomaly.LODA(n_bins=n_bins, n_random_cuts=n_random_cuts, seed=seed))

    def _score_one(self, x):
        return self.model.score_one(x)

    def _learn_one(self, x):
        self.model.learn_one(x)


class RiverOneClassSVM(_RowWise):
    """river's online OneClassSVM on standardised fields (raw score: distance outside the boundary)."""

    def __init__(self, fields: Sequence[str], nu: float = 0.1, grace_period: int = 100):
        super().__init__(fields, grace_period)
        self.model = compose.Pipeline(preprocessing.StandardScaler(), anomaly.OneClassSVM(nu=nu))

    def _score_one(self, x):
        return -self.model.score_one(x)  # river: low = anomalous; ours: high = anomalous

    def _learn_one(self, x):
        self.model.learn_one(x)


class _PerField(_RowWise):
    def _score_one(self, x):
        return max(self._field_score(m, f, x) for f, m in self.models.items())

    def _learn_one(self, x):
        for f, m in self.models.items():
            self._field_learn(m, f, x)

    def _field_score(self, m, f, x):
        return m.score_one(None, x[f])

    def _field_learn(self, m, f, x):
        m.learn_one(None, x[f])


class RiverSAD(_PerField):
    """river's StandardAbsoluteDeviation per field: |x - mean| / std, squashed (0.5 at `z_half`)."""

    def __init__(self, fields: Sequence[str], grace_period: int = 30, z_half: float = 3.5):
        super().__init__(fields, grace_period)
        self.norm = Squash(z_half)
        self.models = {f: anomaly.StandardAbsoluteDeviation() for f in self.fields}


class RiverGaussian(_PerField):
    """river's GaussianScorer per field; its 2|cdf - 0.5| saturates at 1, so we read its z = |x - mu| / sigma."""

    def __init__(self, fields: Sequence[str], window_size: int | None = None, grace_period: int = 100,
                 z_half: float = 3.5):
        super().__init__(fields, grace_period)
        self.norm = Squash(z_half)
        self.models = {f: anomaly.GaussianScorer(window_size=window_size, grace_period=grace_period)
                       for f in self.fields}

    def _field_score(self, m, f, x):
        if m.score_one(None, x[f]) == 0:  # river: still in its grace period
            return 0.0
        g = m.gaussian
        return abs(x[f] - g.mu) / max(g.sigma, 1e-12)  # = inverse of 2|cdf - 0.5|, without saturating


class RiverPAD(_PerField):
    """river's PredictiveAnomalyDetection per field: a linear model predicts the field from the others.

    Its score is already in [0, 1] (1 = squared error above mean + `n_std` standard deviations).
    """

    def __init__(self, fields: Sequence[str], n_std: float = 3.0, grace_period: int = 100):
        super().__init__(fields, grace_period)
        self.norm = Identity()
        self.models = {
            f: anomaly.PredictiveAnomalyDetection(
                preprocessing.StandardScaler() | linear_model.LinearRegression(), n_std=n_std,
                warmup_period=grace_period)
            for f in self.fields
        }

    def _others(self, f, x):
        return {k: v for k, v in x.items() if k != f}

    def _field_score(self, m, f, x):
        return m.score_one(self._others(f, x), x[f])

    def _field_learn(self, m, f, x):
        m.learn_one(self._others(f, x), x[f])
