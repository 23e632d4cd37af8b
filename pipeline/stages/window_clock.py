"""Event clocks for the window stage: one per key (or a single one), and rate-limited per-key warnings.

A clock holds the largest event time its key has shown (``max_ts``) and a floor that idle and forced closes
raise so that emitted windows never reopen. Its watermark is ``max(max_ts - allowed_lateness, floor)``; a
window of the clock closes when the watermark reaches the window's end. Clocks are numbered like the keys of
the window stage (``per_key``) or all rows share clock 0 (``global``).

>>> clocks = EventClocks(lateness=2.0)
>>> clocks.ensure(2)
>>> _, before, after, _ = clocks.advance(np.array([0, 1, 0]), np.array([10.0, 3.0, 12.0]))
>>> before.tolist(), after.tolist(), clocks.watermark().tolist()
([-inf, -inf, 8.0], [8.0, 1.0, 10.0], [10.0, 1.0])
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np

from ..keys import grouped_running_max

log = logging.getLogger("edgesieve")


def _grow(arr: np.ndarray, n: int, fill) -> np.ndarray:
    if len(arr) >= n:
        return arr
    return np.concatenate((arr, np.full(max(n, 2 * len(arr)) - len(arr), fill, dtype=arr.dtype)))


class EventClocks:
    """Per-clock event time (``max_ts``), close floor and last arrival (processing time), as numpy arrays."""

    def __init__(self, lateness: float):
        self.lateness = lateness
        self.n = 0
        self.max_ts = np.empty(0)
        self.floor = np.empty(0)
        self.last_arrival = np.empty(0)

    def ensure(self, n: int, now: float = 0.0) -> None:
        """Make room for clocks 0..n-1; new ones have seen nothing and arrived ``now``."""
        if n <= self.n:
            return
        self.max_ts = _grow(self.max_ts, n, -np.inf)
        self.floor = _grow(self.floor, n, -np.inf)
        self.last_arrival = _grow(self.last_arrival, n, now)
        self.last_arrival[self.n:n] = now
        self.n = n

    def watermark(self, clocks: np.ndarray | None = None) -> np.ndarray:
        ids = slice(0, self.n) if clocks is None else clocks
        return np.maximum(self.max_ts[ids] - self.lateness, self.floor[ids])

    def advance(self, clocks: np.ndarray, ts: np.ndarray):
        """Take the rows' event times into their clocks, in batch order.

        Returns per row the newest event time of its clock before it, the clock's watermark just before and
        just after it (batch order), and the stable order of the rows by clock (the ``after`` values are
        non-decreasing within each clock there).
        """
        before, after, order = grouped_running_max(ts, clocks, self.max_ts)
        floor = self.floor[clocks]
        np.maximum.at(self.max_ts, clocks, ts)
        return before, np.maximum(before - self.lateness, floor), np.maximum(after - self.lateness, floor), order

    def touch(self, clocks: np.ndarray, now: float) -> None:
        self.last_arrival[clocks] = now

    def snapshot(self) -> dict:
        return {"max_ts": self.max_ts[:self.n].copy(), "floor": self.floor[:self.n].copy()}

    def restore(self, state: dict, now: float) -> None:
        self.n = 0
        self.max_ts, self.floor, self.last_arrival = np.empty(0), np.empty(0), np.empty(0)
        n = len(state["max_ts"])
        self.ensure(n, now)   # idle time counts from the restart, not from before it
        self.max_ts[:n] = np.asarray(state["max_ts"], dtype=np.float64)
        self.floor[:n] = np.asarray(state["floor"], dtype=np.float64)


class EpisodeLog:
    """One warning per key per episode: a key's episode starts with a bad reading (late, from the future) and
    ends with its next good one. A key logs at most once per ``every`` seconds; at most ``max_lines`` lines per
    batch, then one line for the rest. The counters, not the log, are the complete record."""

    def __init__(self, describe: Callable[[int, int, float, float], str], every: float = 60.0, max_lines: int = 5):
        self.describe = describe          # (key id, bad readings, worst amount, ts of the worst) -> message
        self.every, self.max_lines = every, max_lines
        self.open = np.zeros(0, dtype=bool)
        self.logged_at = np.zeros(0)

    def update(self, now: float, nkeys: int, bad_keys: np.ndarray, amount: np.ndarray, ts: np.ndarray,
               bad_pos: np.ndarray, good_keys: np.ndarray, good_pos: np.ndarray) -> None:
        """``bad_*`` per bad reading (key id, how far off, event time, position in the batch); ``good_*`` likewise."""
        if not len(bad_keys) and not self.open[:nkeys].any():
            return
        if len(self.open) < nkeys:
            self.open = np.concatenate((self.open, np.zeros(nkeys - len(self.open), dtype=bool)))
            self.logged_at = np.concatenate((self.logged_at, np.full(nkeys - len(self.logged_at), -np.inf)))
        if len(bad_keys):
            count = np.bincount(bad_keys, minlength=nkeys)
            worst = np.full(nkeys, -np.inf)
            np.maximum.at(worst, bad_keys, amount)
            worst_ts = np.zeros(nkeys)
            is_worst = amount == worst[bad_keys]
            worst_ts[bad_keys[is_worst]] = ts[is_worst]
            starting = np.flatnonzero((count > 0) & ~self.open & (now - self.logged_at >= self.every))
            for k in starting[:self.max_lines].tolist():
                log.warning(self.describe(k, int(count[k]), float(worst[k]), float(worst_ts[k])))
            if len(starting) > self.max_lines:
                log.warning("... and %d more key(s) the same (see the counters)", len(starting) - self.max_lines)
            self.logged_at[starting] = now
            self.open[count > 0] = True
        # an episode ends with a good reading after the key's last bad one
        last_bad = np.full(nkeys, -1)
        np.maximum.at(last_bad, bad_keys, bad_pos)
        last_good = np.full(nkeys, -1)
        np.maximum.at(last_good, good_keys, good_pos)
        self.open[last_good > last_bad] = False
