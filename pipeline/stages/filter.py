"""The ``filter`` stage: keep the records for which a safe expression is true.

>>> from pipeline.testing import run_stage
>>> out = run_stage(Filter, {"where": "temperature > 21 and device != 'd2'"}, [
...     {"ts": 1, "tags": {"device": "d1"}, "fields": {"temperature": 22.0}},
...     {"ts": 2, "tags": {"device": "d2"}, "fields": {"temperature": 25.0}},
...     {"ts": 3, "tags": {"device": "d1"}, "fields": {"temperature": 20.0}}])
>>> [r["ts"] for r in out]
[1.0]
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from ..batch import Batch
from ..config import StageConfig
from ..expr import Expression
from ..names import NameWatch
from ..numeric import split_numeric
from ..stage import Context, Stage


class FilterConfig(StageConfig):
    type: Literal["filter"]
    where: str = Field(
        description="Keep records for which this expression is true, e.g. `temperature > 80 and kind == 'pump'`. "
        "Names are fields or tags; arithmetic, comparisons, and/or/not, `in [..]`, abs/sqrt/log/min/max/present().",
    )

    @field_validator("where")
    @classmethod
    def _parses(cls, v: str) -> str:
        Expression(v)
        return v


class Filter(Stage):
    """Keep records matching ``where``; the rest are counted as ``filtered``. Absent fields compare false."""

    Config = FilterConfig
    EXAMPLE = {"where": "temperature > -40"}

    def __init__(self, config: FilterConfig, ctx: Context):
        super().__init__(config, ctx)
        self.expression = Expression(config.where)
        self._numeric = [n for n in self.expression.names()]
        self._names = NameWatch(ctx, self.expression.names(), "filter", texts=[config.where])

    def process(self, batch: Batch) -> Batch:
        self._names.check(batch)
        good, bad, reasons = split_numeric(batch, self._numeric, f"stage {self.ctx.item_id!r}")
        self.ctx.dead_letter(bad, reasons)
        values, over, why = self.expression.evaluate_rows(good)
        if over.any():                   # over a string or integer limit: that record is in error, not the batch
            self.ctx.dead_letter(good.take(over), [f"stage {self.ctx.item_id!r}: {why[i]}" for i in np.flatnonzero(over)])
            good, values = good.take(~over), values[~over]
        keep = np.asarray(values, dtype=bool)
        self.ctx.count("filtered", int(len(good) - keep.sum()))
        return good if keep.all() else good.take(keep)
