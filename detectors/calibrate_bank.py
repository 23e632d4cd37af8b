"""`TailCalibrator` for many keys at once: one slot per key, an exact port (the same floats).

The steps are those of `TailCalibrator`: `add` (raw scores into the pending buffer, as `learn`),
`_refresh` (the decayed histogram; one `bincount` for all keys that refresh), `_fit` (the table:
`TailCalibrator._fit_moments` and `with_shape_prior` themselves, key by key) and `score` (each key's frozen table, all keys at once).
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from .calibrate import BINS, CAP, EDGES, NORMAL, TailCalibrator, with_shape_prior
from .slots import SlotArrays

__all__ = ["CalibratorBank"]

NB = BINS + 1


class CalibratorBank:
    """One `TailCalibrator` per slot, as arrays; `proto` (a fresh calibrator) gives the parameters."""

    def __init__(self, proto: TailCalibrator, capacity: int = 16):
        self.R, self.min_samples, self.tail = proto.refresh, proto.min_samples, proto.tail
        self.half_life = proto.half_life
        self.decay = 0.5 ** (self.R / self.half_life)
        f8, i8 = np.float64, np.int64
        self.a = SlotArrays({
            "count": ((NB,), f8, 0.0), "sum1": ((NB,), f8, 0.0), "sum2": ((NB,), f8, 0.0),
            "pending": ((self.R,), f8, 0.0), "pending_len": ((), i8, 0), "n": ((), i8, 0), "ready": ((), bool, False),
            "total": ((), f8, 0.0), "above": ((NB,), f8, 0.0), "t": ((), f8, 0.0), "q_t": ((), f8, 0.0),
            "gamma": ((), f8, 0.0), "sigma": ((), f8, 1.0)}, capacity)

    def frozen_rows(self, s: np.ndarray) -> np.ndarray:
        return self.R - self.a.pending_len[s]

    def add(self, s: np.ndarray, k: np.ndarray, values: np.ndarray) -> None:
        """`learn` for distinct slots `s`, k[i] raw scores each (`values`: their concatenation in that order);
        refreshes the slots whose pending buffer is full.  A slot never gets more than its `frozen_rows`
        (`ResidualDetector` never gives more)."""
        a = self.a
        rows = np.repeat(s, k)
        col = np.arange(len(rows)) - np.repeat(np.cumsum(k) - k, k)
        a.pending[rows, a.pending_len[rows] + col] = values
        a.pending_len[s] += k
        full = s[a.pending_len[s] == self.R]
        if len(full):
            self._refresh(full)

    def _refresh(self, f: np.ndarray) -> None:
        a = self.a
        raw = np.minimum(a.pending[f], np.where(a.ready[f], CAP * a.t[f], np.inf)[:, None])  # as TailCalibrator
        b = np.clip(np.searchsorted(EDGES, raw, side="right") - 1, 0, BINS)
        idx = (np.arange(len(f))[:, None] * NB + b).ravel()
        for acc, w in ((a.count, np.ones(raw.size)), (a.sum1, raw.ravel()), (a.sum2, (raw * raw).ravel())):
            add = np.bincount(idx, weights=w, minlength=len(f) * NB).reshape(len(f), NB)
            acc[f] = acc[f] * self.decay + add
        a.pending_len[f] = 0
        a.n[f] += self.R
        for slot in f[a.n[f] >= self.min_samples].tolist():
            self._set_table(slot, self._fit(slot))

    def _fit(self, slot: int) -> dict:
        a = self.a
        view = SimpleNamespace(count=a.count[slot], sum1=a.sum1[slot], sum2=a.sum2[slot], tail=self.tail)
        return with_shape_prior(TailCalibrator._fit_moments(view))

    def _set_table(self, slot: int, tb: dict | None) -> None:
        a = self.a
        a.ready[slot] = tb is not None
        if tb is not None:
            a.total[slot], a.above[slot], a.t[slot] = tb["total"], tb["above"], tb["t"]
            a.q_t[slot], a.gamma[slot], a.sigma[slot] = tb["q_t"], tb["gamma"], tb["sigma"]

    def score(self, s: np.ndarray, raw: np.ndarray) -> np.ndarray:
        """`TailCalibrator.score` with each key's frozen table (slots `s` ready)."""
        return 1.0 - self._tail(s, raw)

    def tail_probability(self, s: np.ndarray, raw: np.ndarray) -> np.ndarray:
        """`TailCalibrator.tail_probability`: each key's frozen table, 1 for a slot not ready."""
        ready = self.a.ready[s]
        if ready.all():
            return self._tail(s, raw)
        p = np.ones(len(s))
        k = np.flatnonzero(ready)
        if len(k):
            p[k] = self._tail(s[k], raw[k])
        return p

    def _tail(self, s: np.ndarray, raw: np.ndarray) -> np.ndarray:
        a = self.a
        b = np.clip(np.searchsorted(EDGES, raw, side="right") - 1, 0, BINS)
        lo = EDGES[b]
        hi = np.where(b < BINS, EDGES[np.minimum(b + 1, BINS)], lo)
        frac = np.where(hi > lo, (raw - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0)  # position inside the bin
        nxt = np.where(b < BINS, a.above[s, np.minimum(b + 1, BINS)], 0.0)
        body = (nxt + (a.above[s, b] - nxt) * (1 - frac)) / a.total[s]
        excess = np.maximum(raw - a.t[s], 0.0) / a.sigma[s]
        g = a.gamma[s]
        expo = g < 1e-6
        gs = np.where(expo, 1.0, g)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            gpd = a.q_t[s] * np.where(expo, np.exp(-excess), (1 + gs * excess) ** (-1 / gs))
        p = np.clip(np.where(raw > a.t[s], gpd, body), 0.0, 1.0)
        return np.where(raw <= NORMAL, 1.0, p)

    def export(self, slot: int, st: dict) -> None:
        """Write slot `slot` into `st`, a `TailCalibrator.state()` dict."""
        a = self.a
        st.update(count=a.count[slot].copy(), sum1=a.sum1[slot].copy(), sum2=a.sum2[slot].copy(),
                  pending=a.pending[slot, :a.pending_len[slot]].copy(), n=int(a.n[slot]))
        st["table"] = None if not a.ready[slot] else {
            "total": float(a.total[slot]), "above": a.above[slot].copy(), "t": float(a.t[slot]),
            "q_t": float(a.q_t[slot]), "gamma": float(a.gamma[slot]), "sigma": float(a.sigma[slot])}

    def load(self, slot: int, st: dict) -> None:
        a = self.a
        a.reset(np.array([slot]))
        a.count[slot], a.sum1[slot], a.sum2[slot] = st["count"], st["sum1"], st["sum2"]
        pending = np.asarray(st["pending"], dtype=np.float64)
        a.pending[slot, :len(pending)], a.pending_len[slot], a.n[slot] = pending, len(pending), st["n"]
        self._set_table(slot, st["table"])
