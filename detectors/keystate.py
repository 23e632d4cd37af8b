"""Per-key state of the `anomaly` stage: model, last good values, threshold, debounce and drift.

Everything here processes one key's rows of a micro-batch at once and is independent of how the
stream was split into micro-batches (the restart-equivalence test relies on that).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


class AdaptiveThreshold:
    """Per-key threshold = max(floor, q-quantile of the last `window` normal scores).

    The quantile is recomputed every `refresh` scores (frozen in between, so a chunk is judged at
    once).  The first `min_samples` scores all count (the floor alone applies until then); after
    that, scores at or above the threshold are not added, so a stuck anomaly cannot raise the bar.
    """

    def __init__(self, floor: float, q: float, window: int = 1024, refresh: int = 32, min_samples: int = 128):
        self.floor, self.q, self.window, self.refresh, self.min_samples = floor, q, window, refresh, min_samples
        self.buf = np.zeros(window)
        self.n = self.since = 0
        self.current = floor

    def flags(self, scores: np.ndarray, warming: np.ndarray) -> np.ndarray:
        out = np.zeros(len(scores), dtype=bool)
        pos = 0
        while pos < len(scores):
            end = min(len(scores), pos + self.refresh - self.since)
            s, w = scores[pos:end], warming[pos:end]
            hit = (s >= self.current) & ~w
            out[pos:end] = hit
            keep = s[~w] if self.n < self.min_samples else s[~hit & ~w]  # the first ones all count
            self.buf[(self.n + np.arange(len(keep))) % self.window] = keep
            self.n += len(keep)
            self.since += end - pos
            if self.since == self.refresh:
                self.since = 0
                if self.n >= self.min_samples:
                    q = float(np.quantile(self.buf[: min(self.n, self.window)], self.q))
                    self.current = max(self.floor, q)
            pos = end
        return out


@dataclass
class Debounce:
    """Hysteresis: an episode opens after `alert_after` flagged rows in a row and closes after
    `clear_after` clear rows in a row, so a stuck anomaly raises one alert, with a count.

    >>> d = Debounce(alert_after=2, clear_after=2)
    >>> state, opened, counts, closed = d.apply(np.array([1, 1, 1, 0, 1, 0, 0, 0], bool), np.arange(8.0))
    >>> state.astype(int).tolist(), opened.astype(int).tolist(), counts.tolist()
    ([0, 1, 1, 1, 1, 1, 0, 0], [0, 1, 0, 0, 0, 0, 0, 0], [0.0, 2.0, 3.0, 3.0, 4.0, 4.0, 0.0, 0.0])
    >>> closed   # (first flagged ts, closing ts, flagged rows, closing row)
    [(0.0, 6.0, 4, 6)]
    """

    alert_after: int = 1
    clear_after: int = 1
    active: bool = False
    pending: int = 0  # consecutive rows that argue for flipping the state
    pending_start: float = float("nan")
    count: int = 0  # flagged rows in the open episode
    started: float = float("nan")

    def apply(self, flags: np.ndarray, ts: np.ndarray):
        """Return (is_anomaly, alert_opened, episode_count) per row and the episodes closed [(start, end, count, row)]."""
        n = len(flags)
        state = np.zeros(n, dtype=bool)
        opened = np.zeros(n, dtype=bool)
        counts = np.zeros(n)
        closed: list[tuple[float, float, int, int]] = []
        if n == 0:
            return state, opened, counts, closed
        change = np.flatnonzero(np.diff(flags.astype(np.int8))) + 1  # walk runs of equal flags, not rows
        for a, b in zip([0, *change.tolist()], [*change.tolist(), n]):
            length = b - a
            if bool(flags[a]):
                if self.active:
                    self.pending = 0
                    state[a:b] = True
                    counts[a:b] = self.count + np.arange(1, length + 1)
                    self.count += length
                    continue
                if self.pending == 0:
                    self.pending_start = float(ts[a])
                if self.pending + length < self.alert_after:
                    self.pending += length
                    continue
                r = a + self.alert_after - self.pending - 1
                self.active, self.started, self.pending = True, self.pending_start, 0
                opened[r] = True
                state[r:b] = True
                counts[r:b] = self.alert_after + np.arange(b - r)
                self.count = self.alert_after + (b - r - 1)
            else:
                if not self.active:
                    self.pending = 0
                    continue
                if self.pending + length < self.clear_after:
                    self.pending += length
                    state[a:b] = True
                    counts[a:b] = self.count
                    continue
                r = a + self.clear_after - self.pending - 1
                state[a:r] = True
                counts[a:r] = self.count
                closed.append((self.started, float(ts[r]), self.count, r))
                self.active, self.count, self.pending = False, 0, 0
        return state, opened, counts, closed


@dataclass
class KeyState:
    """Everything the stage keeps for one key."""

    detector: Any
    last: np.ndarray  # last good value per field (NaN: none yet)
    threshold: AdaptiveThreshold | None
    debounce: Debounce
    drift: list | None = None  # one river drift detector per field
    last_seen: float = 0.0
    extra: dict = field(default_factory=dict)
