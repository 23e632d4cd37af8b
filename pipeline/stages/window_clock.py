"""Event clocks for the window stage: one per key (or a single one), and rate-limited per-key warnings.

A clock holds the largest event time its key has shown (``max_ts``) and a floor that idle and forced closes
raise so that emitted windows never reopen. Its watermark is ``max(max_ts - allowed_lateness, floor)``; a
window of the clock closes when the watermark reaches the window's end. Clocks are numbered like the keys of
the window stage (``per_key``) or all rows share clock 0 (``global``).

>>> clocks = EventClocks(lateness=2.0)
>>> clocks.ensure(2)
>>> run, before = clocks.advance(np.array([0, 1, 0]), np.array([10.0, 3.0, 12.0]))
>>> before.tolist(), run.after.tolist(), clocks.watermark().tolist()
([-inf, -inf, 8.0], [8.0, 1.0, 10.0], [10.0, 1.0])
"""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np

from ..keys import RunningMax

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

        Returns the running maximum per clock of ``ts - allowed_lateness`` (:class:`pipeline.keys.RunningMax`:
        each clock's watermark before and after each row, without the floor; comparing these very numbers with
        window ends keeps "late", "closes" and "closed by which reading" consistent to the last bit), and the
        watermark per row just before it, floor included (batch order).
        """
        run = RunningMax(ts - self.lateness, clocks, self.max_ts - self.lateness)
        np.maximum.at(self.max_ts, clocks, ts)
        return run, np.maximum(run.before, self.floor[clocks])

    def touch(self, clocks: np.ndarray, now: float) -> None:
        self.last_arrival[clocks] = now

    def snapshot(self) -> dict:
        # the floor saved is the watermark: a restart or reload with a larger allowed_lateness must not reopen
        # windows the watermark closed (found in review; the watermark under the old lateness is a floor)
        return {"max_ts": self.max_ts[:self.n].copy(), "floor": self.watermark()}

    def restore(self, state: dict, now: float, saved_mode: str, mode: str, n: int) -> None:
        """Clocks from a snapshot; when the pipeline file changed ``watermark:`` since, every new clock starts at
        the newest of the saved ones, so no emitted window reopens. Idle time counts from ``now`` (the restart)."""
        max_ts = np.asarray(state["max_ts"], dtype=np.float64)
        floor = np.asarray(state["floor"], dtype=np.float64)
        if saved_mode != mode:
            max_ts, floor = np.full(n, max_ts.max(initial=-np.inf)), np.full(n, floor.max(initial=-np.inf))
        self.n = 0
        self.max_ts, self.floor, self.last_arrival = np.empty(0), np.empty(0), np.empty(0)
        self.ensure(len(max_ts), now)
        self.max_ts[:self.n], self.floor[:self.n] = max_ts, floor

    def cap(self, limit: float) -> int:
        """Pull clocks that are ahead of ``limit`` back to it; returns how many were."""
        ahead = self.max_ts[:self.n] > limit
        self.max_ts[:self.n][ahead] = limit
        np.minimum(self.floor[:self.n], limit, out=self.floor[:self.n])
        return int(ahead.sum())


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
