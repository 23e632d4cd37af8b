"""Test helpers: run one stage on records, an in-memory source and sink, and a controllable clock.

>>> from pipeline.stages.filter import Filter
>>> run_stage(Filter, {"where": "x > 1"}, [{"ts": 1, "fields": {"x": 2}}, {"ts": 2, "fields": {"x": 0}}])[0]["fields"]
{'x': 2.0}
"""

from __future__ import annotations

import threading
from typing import Any, Iterable, Literal

from pydantic import Field

from .batch import Batch
from .config import SinkConfig, SourceConfig
from .metrics import Metrics
from .stage import Context, Sink, Source, Stage


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = 0.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_context(item_id: str = "under_test", **kwargs) -> tuple[Context, list[tuple[str, list[dict], Any]]]:
    """A context whose dead letters are collected in the returned list as (item id, records, reasons)."""
    dead: list[tuple[str, list[dict], Any]] = []
    ctx = Context(item_id, kwargs.pop("metrics", Metrics("test")),
                  dead_letter=lambda item, batch, reasons: dead.append((item, batch.to_records(), reasons)), **kwargs)
    return ctx, dead


def build_stage(cls: type[Stage], options: dict[str, Any], item_id: str = "under_test", **ctx_kwargs):
    config = cls.Config.model_validate({"id": item_id, "type": _type_name(cls), "inputs": ["in"], **options})
    ctx, dead = make_context(item_id, **ctx_kwargs)
    return cls(config, ctx), dead


def run_stage(cls: type[Stage], options: dict[str, Any], records: Iterable[dict], batch_size: int | None = None) -> list[dict]:
    """Feed records through one stage (in batches of ``batch_size``, default one batch), flush, return output records."""
    stage, _ = build_stage(cls, options)
    records = list(records)
    size = batch_size or max(1, len(records))
    out = [stage.process(Batch.from_records(records[i:i + size])) for i in range(0, len(records), size)]
    out.append(stage.flush() or Batch.empty())
    return Batch.concat(out).to_records()


def _type_name(cls: type) -> str:
    return cls.Config.model_fields["type"].annotation.__args__[0]


class ListSourceConfig(SourceConfig):
    type: Literal["list"]
    records: list[dict] = Field(default_factory=list, description="Records to emit.")
    batch_size: int = Field(100, ge=1, description="Records per emitted batch.")


class ListSource(Source):
    """Emits its configured records in batches; position = records emitted."""

    Config = ListSourceConfig

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        self.start = 0

    def restore(self, position) -> None:
        self.start = int(position or 0)

    def run(self, emit, stop: threading.Event) -> None:
        recs, size = self.config.records, self.config.batch_size
        for i in range(self.start, len(recs), size):
            if stop.is_set():
                return
            emit(Batch.from_records(recs[i:i + size]), position=min(i + size, len(recs)))


class ListSinkConfig(SinkConfig):
    type: Literal["list"]


class ListSink(Sink):
    """Keeps every record written to it in ``self.records``."""

    Config = ListSinkConfig

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        self.records: list[dict] = []

    def write(self, batch: Batch) -> None:
        self.records.extend(batch.to_records())
