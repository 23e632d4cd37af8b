"""Tail calibration: a raw anomaly score becomes 1 - (how often a normal reading of this key scores as high).

`TailCalibrator` keeps, per key, a decayed histogram of the key's own recent raw scores on log-spaced
bins (with the sum and sum of squares of the scores in each bin).  Below a high quantile `t` (the
`1 - tail` quantile, 2% by default) the tail probability is read off the histogram; above it, a
generalised Pareto distribution fitted to the excesses over `t` by the method of moments extrapolates
(the peaks-over-threshold model of SPOT, Siffer et al. 2017).  The calibrated score is ``1 - p``, so
a threshold of ``1 - 1e-4`` flags about one normal reading in 10,000 on any key whose raw scores are
stationary, whatever their scale or shape.

The model is frozen between refreshes (every `refresh` raw scores learned), so a segment of rows
is scored at once and any batching of the stream gives the same scores.  State is plain data.

>>> import numpy as np
>>> cal = TailCalibrator(refresh=32, min_samples=256)
>>> cal.learn(np.abs(np.random.default_rng(0).normal(size=4096)))
>>> [round(float(p), 4) for p in cal.tail_probability(np.array([0.0, 1.5, 2.0, 4.0]))]
[1.0, 0.1381, 0.0492, 0.0003]
"""
from __future__ import annotations

import numpy as np

__all__ = ["TailCalibrator", "plain", "CAP", "NORMAL"]


def plain(v):
    """`v` as plain data (dict, list, str, int, float, bool, None, numpy arrays) for a state codec."""
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, np.ndarray):
        return v.copy()
    if isinstance(v, np.generic):
        return v.item()
    return v

LO, HI, BINS = 1e-3, 1e6, 90  # log-spaced bin edges of the raw score; bin 0 holds everything below LO
EDGES = np.concatenate([[0.0], np.geomspace(LO, HI, BINS)])
CAP = 10.0  # a raw score is learned clipped to CAP times the frozen model's tail threshold (bounded influence)
NORMAL = 1.0  # a raw score of at most this (one scale) is never in the tail, whatever the key's history
SHAPE_PRIOR = 0.2  # while a key has few tail scores, its GPD shape is pulled up towards at least this ...
PRIOR_TAIL = 20.0  # ... with the weight of this many tail scores (a light tail fitted on a dozen is not trusted)


def with_shape_prior(tb: dict) -> dict:
    """``tb`` (a fitted table) with its GPD shape pulled up towards ``SHAPE_PRIOR`` while its tail is short."""
    w = PRIOR_TAIL / (PRIOR_TAIL + tb["q_t"] * tb["total"])
    tb["gamma"] = (1 - w) * tb["gamma"] + w * max(tb["gamma"], SHAPE_PRIOR)
    return tb


class TailCalibrator:
    """Per-key map from raw score to tail probability (histogram body, GPD tail); see the module docstring."""

    def __init__(self, half_life: int = 20_000, tail: float = 0.02, refresh: int = 32, min_samples: int = 256):
        if not 0 < tail < 0.5:
            raise ValueError(f"calibration tail must be in (0, 0.5), got {tail}")
        self.half_life, self.tail, self.refresh, self.min_samples = half_life, tail, refresh, min_samples
        self.count = np.zeros(BINS + 1)  # decayed number of raw scores per bin
        self.sum1 = np.zeros(BINS + 1)  # decayed sum of raw scores per bin
        self.sum2 = np.zeros(BINS + 1)  # decayed sum of squares per bin
        self.pending = np.zeros(0)  # raw scores learned since the last refresh
        self.n = 0
        self.table: dict | None = None  # frozen model: cumulative tail masses and the GPD fit

    @property
    def ready(self) -> bool:
        return self.table is not None

    def frozen_rows(self) -> int:
        return self.refresh - len(self.pending)

    def learn(self, raw: np.ndarray) -> None:
        """Add raw scores; the model is refreshed whenever `refresh` of them have been added."""
        raw = np.asarray(raw, dtype=np.float64)
        pos = 0
        while pos < len(raw):
            take = raw[pos:pos + self.refresh - len(self.pending)]
            self.pending = np.concatenate((self.pending, take))
            pos += len(take)
            if len(self.pending) == self.refresh:
                self._refresh(self.pending)
                self.pending = np.zeros(0)

    def _refresh(self, raw: np.ndarray) -> None:
        decay = 0.5 ** (len(raw) / self.half_life)
        if self.table is not None:  # bounded influence: a spike must not teach the key that spikes are normal
            raw = np.minimum(raw, CAP * self.table["t"])
        b = np.clip(np.searchsorted(EDGES, raw, side="right") - 1, 0, BINS)
        for acc, w in ((self.count, 1.0), (self.sum1, raw), (self.sum2, raw * raw)):
            acc *= decay
            acc += np.bincount(b, weights=np.broadcast_to(w, raw.shape), minlength=BINS + 1)
        self.n += len(raw)
        if self.n >= self.min_samples:
            self.table = self._fit()

    def _fit(self) -> dict:
        """The frozen table: `_fit_moments`, its shape pulled up towards `SHAPE_PRIOR` while the tail is short.

        The method of moments gives too light a shape from a dozen tail scores of a heavy-tailed key (a burst
        over a scale that moves with the bursts read p 2.6e-5 where 0.8% of its scores were as high), so
        with n tail scores the shape is ``(1 - w) gamma + w max(gamma, SHAPE_PRIOR)``, ``w = PRIOR_TAIL /
        (PRIOR_TAIL + n)``: never lighter than fitted, and only heavier while the evidence is short.
        """
        return with_shape_prior(self._fit_moments())

    def _fit_moments(self) -> dict:
        total = float(self.count.sum())
        above = np.cumsum(self.count[::-1])[::-1]  # above[k]: mass in bins >= k
        k = int(np.flatnonzero(above >= self.tail * total)[-1])  # the bin holding the 1 - tail quantile
        k = max(k, 1)
        n_t = float(above[k])
        t = EDGES[k]
        if n_t <= 0:  # nothing above t ever: an exponential tail one bin wide
            return {"total": total, "above": above, "t": t, "q_t": 1.0 / (total + 1), "gamma": 0.0,
                    "sigma": max(t, LO)}
        # the excess moments of the scores clipped at CAP t (bounded influence, as `_refresh` learns them once a
        # table exists): a score learned before the first table, when a key's scale still knew nothing (a run of
        # zeros, then a burst), must not blow the fitted tail up for the rest of the key's life
        c = CAP * t
        over = EDGES >= c
        s1 = np.where(over, self.count * c, self.sum1)[k:].sum()
        s2 = np.where(over, self.count * c * c, self.sum2)[k:].sum()
        m1 = float(s1) / n_t - t  # mean excess over t
        var = max(float(s2) / n_t - (m1 + t) ** 2, 1e-12)
        ratio = m1 * m1 / var
        gamma = float(np.clip(0.5 * (1 - ratio), 0.0, 0.9))  # never lighter than exponential
        sigma = max(0.5 * m1 * (1 + ratio), 0.05 * t, LO)
        return {"total": total, "above": above, "t": t, "q_t": n_t / total, "gamma": gamma, "sigma": sigma}

    def tail_probability(self, raw: np.ndarray) -> np.ndarray:
        """P(a normal reading of this key scores >= raw), from the frozen model (1 while not ready)."""
        raw = np.asarray(raw, dtype=np.float64)
        tb = self.table
        if tb is None:
            return np.ones(len(raw))
        above = np.asarray(tb["above"])
        b = np.clip(np.searchsorted(EDGES, raw, side="right") - 1, 0, BINS)
        lo = EDGES[b]
        hi = np.where(b < BINS, EDGES[np.minimum(b + 1, BINS)], lo)
        frac = np.where(hi > lo, (raw - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0)  # position inside the bin
        nxt = np.where(b < BINS, above[np.minimum(b + 1, BINS)], 0.0)
        body = (nxt + (above[b] - nxt) * (1 - frac)) / tb["total"]
        excess = np.maximum(raw - tb["t"], 0.0) / tb["sigma"]
        g = tb["gamma"]
        gpd = tb["q_t"] * (np.exp(-excess) if g < 1e-6 else (1 + g * excess) ** (-1 / g))
        p = np.clip(np.where(raw > tb["t"], gpd, body), 0.0, 1.0)
        return np.where(raw <= NORMAL, 1.0, p)

    def score(self, raw: np.ndarray) -> np.ndarray:
        """The calibrated anomaly score, 1 - tail probability, in [0, 1]."""
        return 1.0 - self.tail_probability(raw)

    # ------------------------------------------------------------------ state (plain data)
    def state(self) -> dict:
        return plain({"half_life": self.half_life, "tail": self.tail, "refresh": self.refresh,
                "min_samples": self.min_samples, "count": self.count.copy(), "sum1": self.sum1.copy(),
                "sum2": self.sum2.copy(), "pending": self.pending.copy(), "n": self.n,
                "table": None if self.table is None else dict(self.table)})

    @classmethod
    def from_state(cls, state: dict) -> "TailCalibrator":
        cal = cls(state["half_life"], state["tail"], state["refresh"], state["min_samples"])
        for name in ("count", "sum1", "sum2"):
            setattr(cal, name, np.array(state[name], dtype=np.float64))
        cal.pending, cal.n = np.array(state["pending"], dtype=np.float64), int(state["n"])
        cal.table = None if state["table"] is None else dict(state["table"])
        if cal.table is not None:
            cal.table["above"] = np.array(cal.table["above"], dtype=np.float64)
        return cal
