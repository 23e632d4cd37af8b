"""The ``dedup`` stage: emit a key's result only when it changed; repeated identical results are counted.

Put it after an inference stage (or after ``frame_diff`` + ``onnx``) when downstream wants changes only.
A record passes when one of ``fields`` or ``tags`` differs from the last emitted record of its key, or
when ``window`` seconds passed since that one (so a steady result is still re-emitted now and then).
Each emitted record carries ``repeats``: identical results held back before it.

>>> from pipeline.testing import run_stage
>>> out = run_stage(Dedup, {"fields": ["count"]},
...     [{"ts": i, "tags": {"device": "cam"}, "fields": {"count": c}} for i, c in enumerate([2, 2, 2, 3, 3, 2])])
>>> [(r["ts"], r["fields"]["count"], r["fields"]["repeats"]) for r in out]
[(0.0, 2.0, 0.0), (3.0, 3.0, 2.0), (5.0, 2.0, 1.0)]
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from cache.deadband import Deadband
from cache.reuse import key_column
from pipeline.batch import Batch
from pipeline.config import Duration, StageConfig
from pipeline.numeric import split_numeric
from pipeline.stage import Context, Stage, StateChanges


class DedupConfig(StageConfig):
    type: Literal["dedup"]
    fields: list[str] = Field(default_factory=list, description="Numeric result fields compared (exact equality).")
    tags: list[str] = Field(default_factory=list, description="Result tags compared too (e.g. a class label).")
    key: list[str] = Field(default_factory=lambda: ["device"], description="Tags that identify whose result it is.")
    window: Duration | None = Field(None, gt=0, description="Re-emit an unchanged result after this long (record time); none = only changes.")

    @model_validator(mode="after")
    def _something_to_compare(self):
        if not self.fields and not self.tags:
            raise ValueError("dedup needs at least one of fields, tags to compare")
        return self


class Dedup(Stage):
    """Changes only: drop a record whose results equal the last emitted ones of its key (see module docstring)."""

    Config = DedupConfig
    EXAMPLE = {"fields": ["temperature"], "window": "1m"}

    def __init__(self, config: DedupConfig, ctx: Context):
        super().__init__(config, ctx)
        self.band = Deadband(deviation=0.0, max_interval=config.window)
        self._codes: dict[str, int] = {}
        self._saved_codes = 0  # codes in the last saved checkpoint (codes are only ever added)

    def process(self, batch: Batch) -> Batch:
        good, bad, reasons = split_numeric(batch, self.config.fields, f"stage {self.ctx.item_id!r}")
        self.ctx.dead_letter(bad, reasons)
        n = len(good)
        if not n:
            return good
        cols = [good.fields.get(f, np.full(n, np.nan)) for f in self.config.fields]
        for t in self.config.tags:        # a tag value becomes a number that is equal exactly when the text is
            col = good.tags.get(t, np.full(n, None, dtype=object))
            codes = self._codes  # each distinct text gets its own number (kept in the checkpoint): no collisions
            cols.append(np.array([np.nan if v is None else float(codes.setdefault(v, len(codes))) for v in col]))
        d = self.band.decide(key_column(good, self.config.key), good.ts, np.column_stack(cols))
        self.ctx.count("filtered", int(n - d.passed.sum()))
        self.ctx.count("deduplicated", int(n - d.passed.sum()))
        return good.with_fields(repeats=d.suppressed_before.astype(np.float64)).take(d.passed)

    def gauges(self) -> dict[str, float]:
        return {"keys": len(self.band.keys)}

    def snapshot(self):
        return {"band": self.band.snapshot(), "codes": dict(self._codes)}

    def restore(self, state) -> None:
        self.band.restore(state["band"])
        self._codes = dict(state["codes"])
        self._saved_codes = len(self._codes)

    # checkpoints: ("key", k) per key that saw readings, and the tag codes when new ones were added
    def snapshot_changes(self) -> StateChanges:
        entries = {("key", k): v for k, v in self.band.changes().items()}
        if len(self._codes) != self._saved_codes:
            entries[("codes",)] = dict(self._codes)
        return StateChanges(entries)

    def restore_entries(self, entries: dict) -> None:
        self.restore({"band": {k[1]: v for k, v in entries.items() if k[0] == "key"},
                      "codes": entries.get(("codes",), {})})

    def state_saved(self) -> None:
        self.band.saved()
        self._saved_codes = len(self._codes)
