"""The `Detector` protocol, score normalisation to [0, 1], and the detector registry.

A detector watches a fixed tuple of numeric `fields` for one key (device).  It is fed micro-batches
as a float64 matrix `X` (rows, fields) that holds only finite values (the `anomaly` stage applies
the bad-value policy before), and for every row it first scores, then learns, in order:

    scores, warming = detector.score_learn_many(X, protect=None)

`scores` are in [0, 1] and comparable across keys; `warming[i]` is True while the model has seen
too little to judge row i (its score is 0 then).  With `protect=p`, rows scoring >= p are not
learned (the model is not taught the anomaly it flagged; river calls this protect_anomaly_detector).

Every detector is a `SegmentedDetector`: its state is frozen for a number of rows (a Half-Space Trees
window, a MAD refresh period, one row for river's per-row models), so a segment is scored at once,
then the rows to learn are learned.  This keeps per-row semantics exact and batch boundaries
irrelevant: any split of the stream into micro-batches gives the same scores.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np

__all__ = ["Detector", "SegmentedDetector", "Squash", "RobustNormalizer", "DETECTORS", "make_detector"]


@runtime_checkable
class Detector(Protocol):
    """What the `anomaly` stage needs from a per-key model."""

    fields: tuple[str, ...]

    def score_learn_many(self, X: np.ndarray, protect: float | None = None,
                         learn: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Score then learn each row of X, in order; return (scores in [0, 1], warming flags)."""

    def snapshot(self) -> bytes:
        """The model as framed bytes (`detectors.state`: data only, never a pickle)."""

    def restore(self, state: bytes) -> None:
        """Become the model that `snapshot` described."""


def squash(z: np.ndarray, z_half: float) -> np.ndarray:
    """Map a non-negative deviation to [0, 1): 0 -> 0, z_half -> 0.5, large -> 1."""
    z = np.maximum(np.asarray(z, dtype=np.float64), 0.0)
    return z / (z + z_half)


class Squash:
    """Normaliser for scores that are already z-like (robust z, |x - mean| / std)."""

    warming = False

    def __init__(self, z_half: float = 3.5):
        self.z_half = z_half

    def frozen_rows(self) -> int:
        return 1 << 62

    def transform(self, raw: np.ndarray) -> np.ndarray:
        return squash(raw, self.z_half)

    def learn(self, raw: np.ndarray) -> None:
        pass


class Identity(Squash):
    """Normaliser for scores that already lie in [0, 1] with a fixed meaning."""

    def transform(self, raw: np.ndarray) -> np.ndarray:
        return np.clip(np.asarray(raw, dtype=np.float64), 0.0, 1.0)


class RobustNormalizer(Squash):
    """Makes a raw score comparable across keys: robust z of the raw score vs its recent past.

    Keeps the last `window` raw scores of learned rows; their median and MAD are recomputed every
    `refresh` learned rows (frozen in between, so a segment is normalised at once).  The result is
    ``squash(max(0, (raw - median) / (1.4826 * MAD)), z_half)``.  Warming until `min_samples` seen.
    For a bounded raw score (`upper`, e.g. 1 for Half-Space Trees) the scale is capped so that the
    bound reads as a robust z of at least `z_upper`: a saturated detector still flags its maximum.

    >>> n = RobustNormalizer(window=64, refresh=8, min_samples=8)
    >>> n.learn(np.linspace(0.4, 0.6, 8))
    >>> [round(float(v), 2) for v in n.transform(np.array([0.5, 0.7, 2.0]))]
    [0.0, 0.4, 0.83]
    """

    def __init__(self, window: int = 512, refresh: int = 32, min_samples: int = 64, z_half: float = 3.5,
                 upper: float | None = None, z_upper: float = 20.0):
        super().__init__(z_half)
        self.upper, self.z_upper = upper, z_upper
        self.window, self.refresh, self.min_samples = window, refresh, min_samples
        self.buf = np.zeros(window, dtype=np.float64)
        self.n = 0  # raw scores learned in total
        self.since = 0  # learned since the last refresh
        self.median, self.scale = 0.0, 1.0
        self.ready = False

    @property
    def warming(self) -> bool:
        return not self.ready

    def frozen_rows(self) -> int:
        return self.refresh - self.since

    def transform(self, raw: np.ndarray) -> np.ndarray:
        if not self.ready:
            return np.zeros(len(raw))
        return squash((np.asarray(raw, dtype=np.float64) - self.median) / self.scale, self.z_half)

    def learn(self, raw: np.ndarray) -> None:
        raw = np.asarray(raw, dtype=np.float64)[: self.refresh - self.since]  # one segment at most
        self.buf[(self.n + np.arange(len(raw))) % self.window] = raw
        self.n += len(raw)
        self.since += len(raw)
        if self.since == self.refresh:
            self.since = 0
            if self.n >= self.min_samples:
                past = self.buf[: min(self.n, self.window)]
                self.median = float(np.median(past))
                mad = float(np.median(np.abs(past - self.median)))
                self.scale = 1.4826 * mad + 1e-9 * max(1.0, abs(self.median))
                if self.upper is not None:  # bounded raw score: its maximum must read as anomalous
                    self.scale = min(self.scale, max(self.upper - self.median, 1e-12) / self.z_upper)
                self.ready = True


class SegmentedDetector:
    """Base class: the score-then-learn loop over segments in which the model is frozen.

    Subclasses implement `_warming()`, `_frozen_rows()`, `_score(X) -> raw` and `_learn(X, mask)`; the
    normaliser (`self.norm`) maps raw scores to [0, 1].
    """

    normalizer: Callable[[], Squash] = RobustNormalizer

    def __init__(self, fields: Sequence[str]):
        self.fields = tuple(fields)
        self.norm = type(self).normalizer()

    @property
    def warming_up(self) -> bool:
        return self._warming() or self.norm.warming

    def _warming(self) -> bool:
        raise NotImplementedError

    def _frozen_rows(self) -> int:
        return 1

    def _score(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _learn(self, X: np.ndarray, mask: np.ndarray) -> None:
        """Learn the rows X[mask] of the segment just scored."""
        raise NotImplementedError

    def score_learn_many(self, X: np.ndarray, protect: float | None = None,
                         learn: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Score then learn each row in order; rows with `learn[i]` False (imputed) are only scored."""
        X = np.asarray(X, dtype=np.float64).reshape(-1, len(self.fields))
        n = len(X)
        scores = np.zeros(n)
        warming = np.zeros(n, dtype=bool)
        pos = 0
        while pos < n:
            m = max(1, min(n - pos, self._frozen_rows(), self.norm.frozen_rows()))
            seg = X[pos:pos + m]
            model_warm = self._warming()
            raw = self._score(seg)
            if model_warm:
                s = np.zeros(m)
            else:
                s = self.norm.transform(raw)
            warm = model_warm or self.norm.warming
            scores[pos:pos + m] = 0.0 if warm else s
            warming[pos:pos + m] = warm
            ok = np.ones(m, dtype=bool) if (warm or protect is None) else s < protect
            if learn is not None:
                ok &= learn[pos:pos + m]
            if ok.any():
                self._learn(seg, ok)
                if not model_warm:
                    self.norm.learn(np.asarray(raw)[ok])
            pos += m
        return scores, warming

    # state: the object's attributes as data (river models included: see detectors.state)
    def snapshot(self) -> bytes:
        from .state import dump_model

        return dump_model(self.__dict__)

    def restore(self, state: bytes) -> None:
        from .state import load_model

        attrs = load_model(state, f"{type(self).__name__} state")
        self.__dict__.clear()
        self.__dict__.update(attrs)


# name -> "module:Class"; imported lazily so that river is only loaded when a river detector is used
DETECTORS: dict[str, str] = {
    "hst": "detectors.native:HSTDetector",
    "mad": "detectors.native:MADDetector",
    "river_hst": "detectors.river_wrappers:RiverHST",
    "loda": "detectors.river_wrappers:RiverLODA",
    "one_class_svm": "detectors.river_wrappers:RiverOneClassSVM",
    "sad": "detectors.river_wrappers:RiverSAD",
    "gaussian": "detectors.river_wrappers:RiverGaussian",
    "pad": "detectors.river_wrappers:RiverPAD",
}


def detector_class(name: str) -> type:
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; choose one of {sorted(DETECTORS)}")
    module, cls = DETECTORS[name].split(":")
    import importlib

    return getattr(importlib.import_module(module), cls)


def make_detector(name: str, fields: Sequence[str], params: dict[str, Any] | None = None) -> SegmentedDetector:
    """Build detector `name` over `fields` with keyword `params` (unknown names raise TypeError)."""
    return detector_class(name)(fields, **(params or {}))
