"""Stage and source types used only by tests (registered with monkeypatch)."""

from __future__ import annotations

import threading
import time
from typing import Literal

from pydantic import Field

from pipeline.batch import Batch
from pipeline.config import SourceConfig, StageConfig
from pipeline.stage import Source, Stage


class BoomConfig(StageConfig):
    type: Literal["boom"]
    when_field_above: float = Field(100.0, description="Raise when any record's `x` is above this.")


class Boom(Stage):
    """Raises on batches with a large `x` (to exercise on_error)."""

    Config = BoomConfig

    def process(self, batch: Batch) -> Batch:
        if (batch.fields["x"] > self.config.when_field_above).any():
            raise RuntimeError("x is too large")
        return batch


class BurstConfig(SourceConfig):
    type: Literal["burst"]
    batches: int = Field(50, description="How many batches to emit.")
    size: int = Field(10, description="Records per batch.")


class Burst(Source):
    """Emits batches as fast as it can (to exercise the overload policy)."""

    Config = BurstConfig

    def run(self, emit, stop: threading.Event) -> None:
        for b in range(self.config.batches):
            emit(Batch.from_records([{"ts": float(b), "tags": {"device": "d"}, "fields": {"x": float(i)}}
                                     for i in range(self.config.size)]), position=b + 1)


class SlowConfig(StageConfig):
    type: Literal["slow"]
    seconds: float = Field(0.02, description="Sleep per batch.")


class Slow(Stage):
    """Sleeps on every batch (a stage that cannot keep up)."""

    Config = SlowConfig

    def process(self, batch: Batch) -> Batch:
        time.sleep(self.config.seconds)
        return batch
