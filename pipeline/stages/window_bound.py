"""The ``max_open_windows`` bound of the window stage, applied as if the readings came one at a time.

After each reading is added (and after its watermark closes what it closes), when more than ``limit`` windows
are open (all keys) the oldest by end, ties by key id, are forced out until ``limit`` are open, and their clock's
floor is raised to the newest end forced (``global``: the one clock's floor, which also closes the other windows
ending there). A later reading for a window at or below its clock's floor is late. So what is forced, and with
which readings, does not depend on where micro-batches were cut.

One micro-batch is planned in one pass, window by window rather than reading by reading:

* every window the batch touches is listed once: those open before it (``table``, kept between batches while
  the bound is near) and those the batch opens, each with the reading that opens it (its first one) and the
  reading whose watermark closes it (``RunningMax.first_reaching``), or none;
* the open count after each reading without any forcing (cumulative opens minus closes) is an upper bound of
  the real one; before the first reading where it exceeds ``limit`` nothing can be forced;
* from that reading on, only window events are walked (an open, a close, a force), in reading order: the open
  windows in their priority order (end, key), forced from the front by a pointer, with a small heap for windows
  that open behind it (a key that fell behind). No force looks at buffered rows;
* what the walk decided is returned as per-clock floor raises with the reading that made them. The stage then
  marks late every reading added after its window's floor was raised, adds the rest, and removes every closed
  window's rows in its usual single pass; each closed window's output rank says whether a watermark or a force
  closed it, and at which reading.

With room for two windows, device c's first reading opens a third: the oldest (a's, ties by key) is forced out,
and a's next reading is late. Any cut of the four readings gives the same:

>>> from pipeline.stages.window import Window
>>> from pipeline.testing import run_stage
>>> recs = [{"ts": t, "tags": {"device": d}, "fields": {"t": 1.0}} for t, d in [(0, "a"), (1, "b"), (2, "c"), (3, "a")]]
>>> opts = {"size": "10s", "key": ["device"], "aggregates": {"t": ["count"]}, "max_open_windows": 2}
>>> [[(r["tags"]["device"], r["fields"]["count"]) for r in run_stage(Window, opts, recs, batch_size=b)] for b in (1, 3, 4)]
[[('a', 1), ('b', 1), ('c', 1)], [('a', 1), ('b', 1), ('c', 1)], [('a', 1), ('b', 1), ('c', 1)]]
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from ..keys import RunningMax

NEVER = np.iinfo(np.int64).max


@dataclass
class Plan:
    """What the bound decided for one batch: floor raises per clock (reading, clock, floor) and the windows forced."""

    raise_time: np.ndarray       # batch position of the reading after which the floor was raised
    raise_clock: np.ndarray
    raise_floor: np.ndarray      # sorted by (clock, time); floors strictly increase within a clock
    forced: int

    def first_raise(self, clock: np.ndarray, end: np.ndarray) -> np.ndarray:
        """Per (clock, window end): the position of the first reading after which the clock's floor was at or
        above ``end`` (the window was forced then, or could not open after), or NEVER."""
        if not len(self.raise_time) or not len(clock):
            return np.full(len(clock), NEVER, dtype=np.int64)
        values = np.unique(self.raise_floor)
        width = len(values) + 1
        have = self.raise_clock * width + np.searchsorted(values, self.raise_floor)
        want = clock.astype(np.int64) * width + np.searchsorted(values, end, side="left")
        pos = np.searchsorted(have, want, side="left")
        found = pos < len(have)
        found[found] = self.raise_clock[pos[found]] == clock[found]
        return np.where(found, self.raise_time[np.minimum(pos, len(have) - 1)], NEVER)

    def final_floors(self) -> tuple[np.ndarray, np.ndarray]:
        """(clock, floor) of the last raise of each clock."""
        last = np.ones(len(self.raise_clock), dtype=bool)
        last[:-1] = self.raise_clock[1:] != self.raise_clock[:-1]
        return self.raise_clock[last], self.raise_floor[last]


NO_FORCE = Plan(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0), 0)


class OpenWindowBound:
    """Keeps the open-window count (exact while the bound is near, an upper bound otherwise) and plans batches."""

    def __init__(self, size: float, limit: int, per_key: bool):
        self.size, self.limit, self.per_key = size, limit, per_key
        self.table: dict[str, np.ndarray] | None = None   # the open windows (key, clock, start) while near
        self.upper = 0                                      # at least the number of open windows

    def forget(self) -> None:
        """Windows closed outside a batch (idle, flush): the count stays an upper bound, the table is rebuilt."""
        self.table = None

    def reset(self, buffered_rows: int) -> None:
        self.table, self.upper = None, buffered_rows

    def near(self, rows: int, buffered: int) -> bool:
        """Whether ``rows`` more on-time window rows could take the count over the limit; if not, they are counted
        (as an upper bound: each row may open a window) and the batch needs no plan. A table already kept is kept
        up to date until the count is back under half the limit: rebuilding it costs a sort of every buffered row."""
        margin = self.limit if self.table is None else self.limit // 2
        if self.upper + rows <= margin or buffered + rows <= margin:
            self.table = None
            self.upper += rows
            return False
        return True

    def plan(self, windows, key: np.ndarray, clock: np.ndarray, start: np.ndarray, time: np.ndarray,
             run: RunningMax, clocks, n: int) -> Plan:
        """Plan one batch (after ``near`` said so) of ``n`` readings whose on-time window rows are (key, clock,
        start, time = the reading's position in the batch). ``windows`` is the stage's OpenWindows before these rows
        are added, ``run`` the batch's running watermark and ``clocks`` the EventClocks after the batch, before any
        force."""
        if self.table is None:
            self.table = windows.windows()
        old = self.table
        # one entry per window the batch touches: the open ones, then the new ones with the reading opening them
        starts, start_code = np.unique(np.concatenate((old["start"], start)), return_inverse=True)
        code = np.concatenate((old["key"], key)) * len(starts) + start_code
        old_code, row_code = code[:len(old["start"])], code[len(old["start"]):]
        new = ~np.isin(row_code, old_code)
        order = np.lexsort((time[new], row_code[new]))
        c = row_code[new][order]
        head = np.ones(len(c), dtype=bool)
        head[1:] = c[1:] != c[:-1]
        first = np.flatnonzero(new)[order[head]]
        w_key = np.concatenate((old["key"], key[first]))
        w_clock = np.concatenate((old["clock"], clock[first]))
        w_start = np.concatenate((old["start"], start[first]))
        w_open = np.concatenate((np.full(len(old["start"]), -1, dtype=np.int64), time[first]))
        w_end = w_start + self.size
        pos = run.first_reaching(w_clock, w_end)
        w_close = np.where(pos >= 0, run.order[np.maximum(pos, 0)], NEVER)
        # closed before the batch: only after a restore that changed ``watermark:``
        w_close[(pos < 0) & (w_end <= clocks.watermark(w_clock))] = -1
        over = self._first_over(w_open, w_close, len(old["start"]), n)
        if over < 0:
            left = w_close == NEVER
            plan = NO_FORCE
        else:
            prio = np.lexsort((w_key, w_end))
            w_key, w_clock, w_start, w_end, w_open, w_close = (a[prio] for a in (w_key, w_clock, w_start, w_end,
                                                                                   w_open, w_close))
            left, plan = self._walk(w_clock, w_end, w_open, w_close, over)
        self.table = {"key": w_key[left], "clock": w_clock[left], "start": w_start[left]}
        self.upper = int(left.sum())
        return plan

    def _first_over(self, w_open, w_close, nold, n) -> int:
        """The first reading after which more than ``limit`` windows would be open without forcing, or -1."""
        opened = np.bincount(w_open[nold:], minlength=n)
        shut = w_close[(w_close >= 0) & (w_close < n)]
        count = nold - int((w_close < 0).sum()) + np.cumsum(opened - np.bincount(shut, minlength=n))
        over = np.flatnonzero(count > self.limit)
        return int(over[0]) if len(over) else -1

    def _walk(self, clock, end, w_open, w_close, over):
        """From reading ``over`` on, walk the window events in reading order; windows are in priority order."""
        nwin = len(end)
        status = np.where(w_close < over, 2, np.where(w_open < over, 1, 0)).astype(np.int8)   # 0 not yet, 1 open
        count = int((status == 1).sum())
        opening = np.flatnonzero(w_open >= over)
        opening = opening[np.argsort(w_open[opening], kind="stable")]
        closing = np.flatnonzero((w_close >= over) & (w_close < NEVER))
        closing = closing[np.argsort(w_close[closing], kind="stable")]
        checks = np.unique(np.append(w_open[opening], over)).tolist()   # the count grows only when one opens
        status, end_l, clock_l = status.tolist(), end.tolist(), clock.tolist()
        open_t, close_t = w_open[opening].tolist() + [NEVER], w_close[closing].tolist() + [NEVER]
        opening, closing = opening.tolist(), closing.tolist()
        floor: dict[int, float] = {}
        raises: list[tuple[int, int, float]] = []
        heap: list[int] = []
        ptr = ci = oi = forced = 0
        for t in checks:
            while close_t[ci] <= t:                        # a watermark close comes before the force check
                w = closing[ci]
                ci += 1
                if status[w] == 1:
                    status[w] = 2
                    count -= 1
            while open_t[oi] == t:
                w = opening[oi]
                oi += 1
                if floor.get(clock_l[w], -np.inf) >= end_l[w]:
                    status[w] = 2                          # its clock's floor passed it: the reading is late
                    continue
                status[w] = 1
                count += 1
                if w < ptr:                                # behind the pointer (a key that fell behind)
                    heapq.heappush(heap, w)
            if count <= self.limit:
                continue
            newest = -np.inf
            while True:
                while heap and status[heap[0]] != 1:
                    heapq.heappop(heap)
                while ptr < nwin and status[ptr] != 1:
                    ptr += 1
                w = heap[0] if heap and (ptr >= nwin or heap[0] < ptr) else ptr
                if w >= nwin or not (count > self.limit or (not self.per_key and end_l[w] <= newest)):
                    break                                  # global: one clock's floor closes every window ending there
                status[w] = 2
                count -= 1
                forced += 1
                newest = end_l[w]
                if self.per_key:
                    floor[clock_l[w]] = newest
                    raises.append((t, clock_l[w], newest))
            if not self.per_key:
                floor[0] = newest
                raises.append((t, 0, newest))
        left = (np.array(status, dtype=np.int8) == 1) & (w_close == NEVER)    # closes after the last check too
        return left, self._plan(raises, forced)

    @staticmethod
    def _plan(raises, forced) -> Plan:
        if not raises:
            return Plan(NO_FORCE.raise_time, NO_FORCE.raise_clock, NO_FORCE.raise_floor, forced)
        t, c, f = (np.array(x) for x in zip(*raises))
        order = np.lexsort((f, t, c))
        return Plan(t[order].astype(np.int64), c[order].astype(np.int64), f[order].astype(np.float64), forced)
