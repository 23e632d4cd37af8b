"""Native (numpy) detectors: Half-Space Trees with warm-up scaling, and a robust rolling MAD z-score."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .base import RobustNormalizer, SegmentedDetector, Squash
from .hst import HalfSpaceTrees

__all__ = ["HSTDetector", "MADDetector"]


class HSTDetector(SegmentedDetector):
    """Native Half-Space Trees over `fields`, scaled by limits learned during warm-up.

    HST needs the range of every feature.  Unless `limits` are given, the first `window_size` rows
    are buffered, the limits are set to their [min, max] widened by `margin` of the range on each
    side, the trees are built and learn the buffer (which completes HST's own first window).
    Raw scores are made comparable across keys by a `RobustNormalizer`.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> det = HSTDetector(["t", "p"], n_trees=10, height=6, window_size=50, seed=1)
    >>> normal = rng.normal([20.0, 1.0], [0.5, 0.05], size=(400, 2))
    >>> s, warm = det.score_learn_many(normal)
    >>> bool(warm[0]), bool(warm[-1])
    (True, False)
    >>> s, warm = det.score_learn_many(np.array([[20.1, 1.0], [35.0, 3.0]]))
    >>> s.round(2).tolist()
    [0.0, 0.83]
    """

    def __init__(self, fields: Sequence[str], n_trees: int = 10, height: int = 8, window_size: int = 250,
                 seed: int = 0, margin: float = 0.25, limits: dict | None = None, z_half: float = 3.5):
        super().__init__(fields)
        self.norm = RobustNormalizer(z_half=z_half, upper=1.0)
        self.params = dict(n_trees=n_trees, height=height, window_size=window_size, seed=seed)
        self.margin = margin
        self.hst: HalfSpaceTrees | None = None
        self.buffer = np.zeros((0, len(self.fields)))
        self._leaves = None
        if limits is not None:
            self._make([tuple(limits[f]) for f in self.fields])

    def _make(self, lims) -> None:
        self.hst = HalfSpaceTrees(limits=dict(enumerate(lims)), **self.params)
        self.hst.learn_many(np.zeros((0, len(self.fields))))  # builds the trees (features 0..d-1)

    @property
    def nbytes(self) -> int:
        return (self.hst.nbytes if self.hst else 0) + self.buffer.nbytes + self.norm.buf.nbytes

    def _warming(self) -> bool:
        return self.hst is None or self.hst.warming_up

    def _frozen_rows(self) -> int:
        if self.hst is None:
            return self.params["window_size"] - len(self.buffer)
        return self.hst.window_size - self.hst.counter

    def _score(self, X: np.ndarray) -> np.ndarray:
        if self.hst is None:
            self._leaves = None
            return np.zeros(len(X))
        self._leaves = self.hst._leaves(X)
        return self.hst._score_leaves(self._leaves)

    def _learn(self, X: np.ndarray, mask: np.ndarray) -> None:
        hst = self.hst
        if hst is None:
            self.buffer = np.vstack([self.buffer, X[mask]])
            if len(self.buffer) == self.params["window_size"]:
                lo, hi = self.buffer.min(axis=0), self.buffer.max(axis=0)
                pad = np.maximum((hi - lo) * self.margin, 1e-6 * np.maximum(1.0, np.abs(hi)))
                self._make(list(zip((lo - pad).tolist(), (hi + pad).tolist())))
                self.hst.learn_many(self.buffer)
                self.buffer = np.zeros((0, len(self.fields)))
            return
        leaves = self._leaves if self._leaves is not None else hst._leaves(X)
        hst._learn_leaves(leaves[:, mask])
        hst.counter += int(mask.sum())
        if hst.counter == hst.window_size:
            hst._pivot()
        self._leaves = None


class MADDetector(SegmentedDetector):
    """Robust rolling z-score: |x - median| / (1.4826 MAD) per field over the last `window` learned rows.

    The median and MAD are recomputed every `refresh` learned rows (frozen in between, so a segment
    is scored at once); the raw score is the largest robust z over the fields, squashed to [0, 1]
    with 0.5 at `z_half` (3.5 is Iglewicz and Hoaglin's outlier cut-off).  A field whose MAD is 0
    (quantised sensors) falls back to the mean absolute deviation, then to `min_scale` * |median|.

    >>> import numpy as np
    >>> det = MADDetector(["v"], window=64, refresh=8, min_samples=16)
    >>> s, warm = det.score_learn_many(np.sin(np.arange(64.0))[:, None])
    >>> int(warm.sum())
    16
    >>> s, warm = det.score_learn_many(np.array([[0.1], [9.0]]))
    >>> [round(float(v), 2) for v in s]
    [0.06, 0.56]
    """

    def __init__(self, fields: Sequence[str], window: int = 256, refresh: int = 16, min_samples: int = 64,
                 z_half: float = 3.5, min_scale: float = 1e-3, smooth: int = 3):
        super().__init__(fields)
        if smooth < 1:
            raise ValueError(f"mad: smooth must be >= 1 rows, got {smooth}")
        self.smooth = smooth
        self.tail = np.zeros((smooth - 1, len(self.fields)))  # last smooth-1 rows seen (moving average)
        self.seen = 0
        self._seg = None
        if not 1 <= refresh <= window or min_samples > window:
            raise ValueError(f"mad: need 1 <= refresh <= window and min_samples <= window; got "
                             f"refresh={refresh}, window={window}, min_samples={min_samples}")
        self.norm = Squash(z_half)
        self.window, self.refresh, self.min_samples, self.min_scale = window, refresh, min_samples, min_scale
        d = len(self.fields)
        self.buf = np.zeros((window, d))
        self.n = 0
        self.since = 0
        self.median = np.zeros(d)
        self.scale = np.ones(d)
        self.ready = False

    @property
    def nbytes(self) -> int:
        return self.buf.nbytes + self.median.nbytes + self.scale.nbytes

    def _warming(self) -> bool:
        return not self.ready

    def _frozen_rows(self) -> int:
        return self.refresh - self.since

    def _smoothed(self, X: np.ndarray) -> np.ndarray:
        """Moving average of the last `smooth` rows seen (fewer at the start of the stream)."""
        if self.smooth == 1:
            return X
        k, m = self.smooth, len(X)
        full = np.concatenate([self.tail, X])  # the tail starts as zeros, so sums are right from row 1
        acc = full[:m].copy()
        for i in range(1, k):  # always summed oldest first: the same floats whatever the batch split
            acc += full[i:i + m]
        seen = np.minimum(self.seen + 1 + np.arange(m), k)
        self.seen += m
        self.tail = full[-(k - 1):]
        return acc / seen[:, None]

    def _score(self, X: np.ndarray) -> np.ndarray:
        self._seg = self._smoothed(X)
        if not self.ready:
            return np.zeros(len(X))
        return (np.abs(self._seg - self.median) / self.scale).max(axis=1)

    def _learn(self, X: np.ndarray, mask: np.ndarray) -> None:
        X = self._seg[mask]
        self.buf[(self.n + np.arange(len(X))) % self.window] = X
        self.n += len(X)
        self.since += len(X)
        if self.since == self.refresh:
            self.since = 0
            if self.n >= self.min_samples:
                past = self.buf[: min(self.n, self.window)]
                med = _median(past)
                dev = np.abs(past - med)
                scale = 1.4826 * _median(dev)
                if not (scale > 0).all():  # quantised readings: fall back to the mean absolute deviation
                    scale = np.where(scale > 0, scale, 1.2533 * dev.mean(axis=0))
                self.median = med
                self.scale = np.maximum(scale, self.min_scale * np.maximum(np.abs(med), 1e-6))
                self.ready = True


def _median(a: np.ndarray) -> np.ndarray:
    """Column medians, as np.median computes them (partition, mean of the middle two), with less overhead."""
    n = len(a)
    k = n // 2
    if n % 2:
        return np.partition(a, k, axis=0)[k]
    p = np.partition(a, (k - 1, k), axis=0)
    return (p[k - 1] + p[k]) / 2
