"""The ``deadband`` stage: report by exception, as process historians do it.

A reading of a key passes when one of its fields moved more than ``deviation`` (absolute) or
``percent`` (of the last passed value) away from the last *passed* reading, or when ``max_interval``
seconds elapsed since the last passed reading; but never sooner than ``min_interval`` seconds after
it. The first reading of a key always passes. Suppressed readings are counted; every passed reading
carries how many were suppressed before it.

:class:`Deadband` is the algorithm; it works on a whole micro-batch at once per key (a window of rows
is compared with the last passed value in one numpy expression, the window grows with the run length).

>>> import numpy as np
>>> db = Deadband(deviation=0.5, max_interval=10.0)
>>> v = np.array([[20.0], [20.2], [20.4], [20.6], [20.7], [19.9], [20.0]])
>>> d = db.decide(["pump"] * 7, [0, 1, 2, 3, 4, 5, 16], v)
>>> d.passed.tolist()
[True, False, False, True, False, True, True]
>>> d.suppressed_before.tolist()
[0, 0, 0, 2, 0, 1, 0]

As a stage (passed readings get the field ``suppressed``: readings held back before this one):

>>> from pipeline.testing import run_stage
>>> out = run_stage(DeadbandStage, {"fields": ["t"], "deviation": 0.5},
...     [{"ts": i, "tags": {"device": "pump"}, "fields": {"t": t}} for i, t in enumerate([20.0, 20.2, 20.9, 21.0])])
>>> [(r["ts"], r["fields"]) for r in out]
[(0.0, {'t': 20.0, 'suppressed': 0.0}), (2.0, {'t': 20.9, 'suppressed': 1.0})]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from cache.reuse import key_column
from pipeline.batch import Batch
from pipeline.config import Duration, StageConfig
from pipeline.keys import factorize, group_rows
from pipeline.numeric import split_numeric
from pipeline.stage import Context, Stage, StateChanges


@dataclass
class DeadbandDecision:
    passed: np.ndarray             # bool (n,)
    reason: np.ndarray             # object (n,): first | moved | max_interval | suppressed
    suppressed_before: np.ndarray  # int (n,): readings of the key suppressed since the last passed one


class Deadband:
    """Per-key last passed values and timestamps (see module docstring)."""

    def __init__(self, deviation: float | None = None, percent: float | None = None,
                 max_interval: float | None = None, min_interval: float = 0.0):
        if deviation is None and percent is None and max_interval is None:
            raise ValueError("deadband needs at least one of deviation, percent, max_interval")
        self.deviation = deviation
        self.percent = percent
        self.max_interval = max_interval
        self.min_interval = float(min_interval or 0.0)
        self.keys: dict = {}   # key -> {"last": (f,) float, "ts": float, "pending": int, counters}
        self.dirty: set = set()   # keys changed since the last saved checkpoint
        self._taken: set = set()  # keys handed to a checkpoint not saved yet

    def _moved(self, vals: np.ndarray, last: np.ndarray) -> np.ndarray:
        diff = np.abs(vals - last[None])
        moved = np.zeros(len(vals), bool)
        with np.errstate(invalid="ignore"):
            if self.deviation is not None:
                moved |= np.any(diff > self.deviation, axis=1)
            if self.percent is not None:
                moved |= np.any(diff > np.abs(last)[None] * (self.percent / 100.0), axis=1)
            # a field absent from the last passed reading but present now counts as moved
            moved |= np.any(np.isnan(last)[None] & ~np.isnan(vals), axis=1)
        return moved

    def decide(self, keys, ts, values) -> DeadbandDecision:
        """``values``: float array (n, f), NaN = field absent in that reading."""
        values = np.asarray(values, dtype=np.float64).reshape(len(keys), -1)
        ts = np.asarray(ts, dtype=np.float64)
        n = len(values)
        passed = np.zeros(n, bool)
        reason = np.full(n, "suppressed", dtype=object)
        before = np.zeros(n, np.int64)
        codes, uniques = factorize(keys)
        for k, rows in zip(uniques, group_rows(codes, len(uniques))):
            self._decide_key(k, rows, ts, values, passed, reason, before)
        return DeadbandDecision(passed, reason, before)

    def _decide_key(self, k, rows, ts, values, passed, reason, before):
        self.dirty.add(k)
        st = self.keys.get(k)
        pos, m = 0, len(rows)
        if st is None:
            i = rows[0]
            st = self.keys[k] = {"last": values[i].copy(), "ts": float(ts[i]), "pending": 0, "run": 8,
                                 "seen": 1, "passed": 1}
            passed[i], reason[i] = True, "first"
            pos = 1
        while pos < m:
            w = min(m - pos, max(4, 2 * st["run"]))
            r = rows[pos:pos + w]
            last = st["last"]
            if len(last) != values.shape[1]:     # field set changed: treat all as moved
                last = np.full(values.shape[1], np.nan)
            elapsed = ts[r] - st["ts"]
            moved = self._moved(values[r], last)
            late = elapsed >= self.max_interval if self.max_interval is not None else np.zeros(w, bool)
            ok = (moved | late) & (elapsed >= self.min_interval)
            j = int(np.argmax(ok)) if ok.any() else w
            st["seen"] += min(j + 1, w)
            if j == w:
                st["pending"] += w
                st["run"] = st["pending"]
                pos += w
                continue
            i = r[j]
            passed[i] = True
            reason[i] = "moved" if moved[j] else "max_interval"
            before[i] = st["pending"] + j
            st["passed"] += 1
            st["run"] = st["pending"] + j + 1
            st["pending"] = 0
            # absent fields keep their last passed value
            st["last"] = np.where(np.isnan(values[i]), last, values[i])
            st["ts"] = float(ts[i])
            pos += j + 1

    def stats(self) -> dict:
        return {k: {"seen": v["seen"], "passed": v["passed"], "suppressed": v["seen"] - v["passed"]}
                for k, v in self.keys.items()}

    def snapshot(self) -> dict:
        return {k: {**v, "last": v["last"].copy()} for k, v in self.keys.items()}

    def restore(self, state: dict | None) -> None:
        self.keys = {k: {**v, "last": np.array(v["last"], dtype=np.float64)} for k, v in (state or {}).items()}
        self.dirty, self._taken = set(), set()

    def changes(self) -> dict:
        """The state of the keys that saw readings since the last saved checkpoint (see `Stage.snapshot_changes`)."""
        self._taken |= self.dirty  # a checkpoint that failed to save is retried with the next one
        self.dirty = set()
        return {k: {**self.keys[k], "last": self.keys[k]["last"].copy()} for k in self._taken}

    def saved(self) -> None:
        self._taken = set()


class DeadbandConfig(StageConfig):
    type: Literal["deadband"]
    fields: list[str] = Field(min_length=1, description="Numeric fields watched; a reading passes when any of them moved.")
    key: list[str] = Field(default_factory=lambda: ["device"], description="Tags that identify a series; each key has its own last passed value.")
    deviation: float | None = Field(None, ge=0, description="Absolute change (in the field's unit) that lets a reading pass.")
    percent: float | None = Field(None, ge=0, description="Change in percent of the last passed value that lets a reading pass.")
    max_interval: Duration | None = Field(None, gt=0, description="Pass a reading anyway when this long passed since the last passed one (heartbeat).")
    min_interval: Duration = Field(0.0, description="Never pass readings of a key more often than this (record time).")

    @model_validator(mode="after")
    def _needs_a_rule(self):
        if self.deviation is None and self.percent is None and self.max_interval is None:
            raise ValueError("deadband needs at least one of deviation, percent, max_interval")
        return self


class DeadbandStage(Stage):
    """Pass a reading only when it moved beyond the deadband (or the heartbeat is due); count the rest."""

    Config = DeadbandConfig
    EXAMPLE = {"fields": ["temperature"], "deviation": 0.5, "max_interval": "5m"}

    def __init__(self, config: DeadbandConfig, ctx: Context):
        super().__init__(config, ctx)
        c = config
        self.band = Deadband(c.deviation, c.percent, c.max_interval, c.min_interval)

    def process(self, batch: Batch) -> Batch:
        good, bad, reasons = split_numeric(batch, self.config.fields, f"stage {self.ctx.item_id!r}")
        self.ctx.dead_letter(bad, reasons)
        if not len(good):
            return good
        n = len(good)
        vals = np.column_stack([good.fields.get(f, np.full(n, np.nan)) for f in self.config.fields])
        d = self.band.decide(key_column(good, self.config.key), good.ts, vals)
        suppressed = int(n - d.passed.sum())
        self.ctx.count("filtered", suppressed)
        self.ctx.count("suppressed", suppressed)
        return good.with_fields(suppressed=d.suppressed_before.astype(np.float64)).take(d.passed)

    def stats(self) -> dict:
        return self.band.stats()

    def gauges(self) -> dict[str, float]:
        return {"keys": len(self.band.keys)}

    def snapshot(self):
        return self.band.snapshot()

    def restore(self, state) -> None:
        self.band.restore(state)

    # checkpoints: one entry per key, only the keys that saw readings since the last one
    def snapshot_changes(self) -> StateChanges:
        return StateChanges(self.band.changes())

    def restore_entries(self, entries: dict) -> None:
        self.band.restore(entries)

    def state_saved(self) -> None:
        self.band.saved()
