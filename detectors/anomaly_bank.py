"""The `anomaly` stage's keys as arrays, for `residual`: one slot per key, a batch in vectorised passes.

`KeyBank` holds what a `KeyState` holds for every key of the stage (the detector in a `ResidualBank`,
the last good values, the debounce, when the key was last seen) and processes a batch of many keys'
rows without a loop over keys: bad-value imputation, scoring and learning, thresholding and debounce
run once per rank (the r-th row of each key in the batch).  `keystate(key)` and `adopt(key, state)`
convert a slot to and from the per-key `KeyState`, so checkpoints and spill files are those of the
per-key path, and a checkpoint written before this engine existed restores into it.
"""
from __future__ import annotations

import numpy as np

from .keystate import Debounce, KeyState
from .residual import ResidualDetector
from .residual_bank import ResidualBank
from .slots import SlotArrays, rank_passes

__all__ = ["KeyBank"]


class KeyBank:
    """The keys of one `anomaly` stage with detector `residual`, no `adaptive` threshold and no `drift`."""

    def __init__(self, proto: ResidualDetector, threshold: float, alert_after: int, clear_after: int):
        self.proto, self.threshold = proto, threshold
        self.alert_after, self.clear_after = alert_after, clear_after
        d = len(proto.fields)
        self.det = ResidualBank(proto)
        self.a = SlotArrays({
            "last": ((d,), np.float64, np.nan), "last_seen": ((), np.float64, 0.0),
            "active": ((), bool, False), "pending": ((), np.int64, 0), "pending_start": ((), np.float64, np.nan),
            "count": ((), np.int64, 0), "started": ((), np.float64, np.nan)})
        self.slots: dict[tuple, int] = {}  # key -> slot
        self.keys: list[tuple | None] = []  # slot -> key (None: free)
        self.free: list[int] = []

    def __len__(self) -> int:
        return len(self.slots)

    def __contains__(self, key) -> bool:
        return key in self.slots

    def __iter__(self):
        return iter(self.slots)

    @property
    def bytes_per_key(self) -> int:
        return self.det.bytes_per_key + self.a.nbytes // max(self.a.capacity, 1)

    # ------------------------------------------------------------------ slots
    def new(self, key: tuple) -> int:
        """A fresh slot for `key` (a new key's state)."""
        if self.free:
            slot = self.free.pop()
            self.keys[slot] = key
        else:
            slot = len(self.keys)
            self.keys.append(key)
            self.a.grow(slot + 1)
            self.det.grow(slot + 1)
        self.slots[key] = slot
        return slot

    def drop(self, key: tuple) -> None:
        slot = self.slots.pop(key)
        self.keys[slot] = None
        self.a.reset(np.array([slot]))
        self.det.reset(np.array([slot]))
        self.free.append(slot)

    def keystate(self, key: tuple) -> KeyState:
        """The key's state as the per-key path keeps it (for checkpoints and spill files)."""
        s, a = self.slots[key], self.a
        deb = Debounce(self.alert_after, self.clear_after, active=bool(a.active[s]), pending=int(a.pending[s]),
                       pending_start=float(a.pending_start[s]), count=int(a.count[s]), started=float(a.started[s]))
        return KeyState(detector=ResidualDetector.from_state(self.det.export(s)), last=a.last[s].copy(),
                        threshold=None, debounce=deb, drift=None, last_seen=float(a.last_seen[s]))

    def adopt(self, key: tuple, st: KeyState, where: str) -> None:
        """Put a per-key `KeyState` (restored or reloaded) into a slot of its own."""
        if not isinstance(st.detector, ResidualDetector) or st.threshold is not None or st.drift is not None:
            raise ValueError(f"{where}: the saved state of key {key!r} is not that of a `residual` detector without "
                             "`adaptive` or `drift`; it was written with other options (start with a fresh state "
                             "directory, or restore the options it was written with)")
        s = self.slots.get(key)
        if s is None:
            s = self.new(key)
        a, deb = self.a, st.debounce
        a.last[s], a.last_seen[s] = st.last, st.last_seen
        a.active[s], a.pending[s], a.pending_start[s] = deb.active, deb.pending, deb.pending_start
        a.count[s], a.started[s] = deb.count, deb.started
        self.det.load(s, st.detector.state())

    # ------------------------------------------------------------------ a batch
    def impute(self, s: np.ndarray, X: np.ndarray, bad: np.ndarray, fill: bool) -> tuple[np.ndarray, np.ndarray]:
        """Rows of slots `s` (stream order): `fill` replaces a bad cell by the key's previous good value of the
        field (as `anomaly._forward_fill`) and keeps each field's last good value (a good cell of a partly bad row
        counts, as it does within the batch); otherwise the slots' last good rows are kept.  Returns (X, learn)."""
        a = self.a
        learn = ~bad.any(axis=1)
        if not len(s):           # a micro-batch of bad readings only (dead-lettered or skipped before this)
            return X, learn
        if learn.all():  # the common case: every reading usable and learned; the last row of each key is kept
            order = np.argsort(s, kind="stable")
            ends = order[np.flatnonzero(np.r_[s[order][1:] != s[order][:-1], True])]
            a.last[s[ends]] = X[ends]
            return X, learn
        X = X.copy()
        prev = a.last.copy() if fill else None  # per key and field: the last good value, within this batch too
        for rows, _left in rank_passes(s):
            sr = s[rows]
            if fill:
                Xr = np.where(bad[rows], prev[sr], X[rows])
                X[rows] = Xr
                prev[sr] = Xr
                a.last[sr] = Xr          # before, only fully good rows: a restart or another batching filled otherwise
            else:
                good = rows[learn[rows]]
                a.last[s[good]] = X[good]
        return X, learn

    def debounce(self, s: np.ndarray, flags: np.ndarray, ts: np.ndarray):
        """`Debounce.apply` for the rows of slots `s` (stream order): (is_anomaly, opened, counts, closed) with
        closed = [(row, first flagged ts, closing ts, flagged rows)]."""
        n = len(s)
        state, opened, counts = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool), np.zeros(n)
        closed = []
        a, up, down = self.a, self.alert_after, self.clear_after
        for rows, _left in rank_passes(s):
            sr, f, t = s[rows], flags[rows], ts[rows]
            active, pending, count = a.active[sr], a.pending[sr], a.count[sr]
            pstart, started = a.pending_start[sr], a.started[sr]
            on = f & active  # flagged, in an episode
            pending[on], count[on] = 0, count[on] + 1
            rise = f & ~active
            pstart = np.where(rise & (pending == 0), t, pstart)
            opens = rise & (pending + 1 >= up)
            pending[rise & ~opens] += 1
            active[opens], started[opens], pending[opens], count[opens] = True, pstart[opens], 0, up
            fall = ~f & active
            closes = fall & (pending + 1 >= down)
            pending[fall & ~closes] += 1
            state[rows] = on | opens | (fall & ~closes)
            opened[rows] = opens
            counts[rows] = np.where(state[rows], count, 0)
            for i in np.flatnonzero(closes).tolist():
                closed.append((int(rows[i]), float(started[i]), float(t[i]), int(count[i])))
            active[closes], count[closes], pending[closes] = False, 0, 0
            pending[~f & ~active & ~closes] = 0
            a.active[sr], a.pending[sr], a.count[sr], a.pending_start[sr], a.started[sr] = \
                active, pending, count, pstart, started
        closed.sort()
        return state, opened, counts, closed
