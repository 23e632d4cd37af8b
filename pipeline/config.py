"""Typed configuration: the base models every stage, source and sink config extends, and durations.

>>> parse_duration("1m30s"), parse_duration("250ms"), parse_duration(5)
(90.0, 0.25, 5.0)
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator

OUTPUT = {"path": "output"}   # a file the pipeline writes (see pipeline/paths.py)
INPUT = {"path": "input"}     # a file the pipeline reads

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|s|m|h|d)")
_UNIT = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> float:
    """Seconds from a number (seconds) or a string such as ``10s``, ``5m``, ``1h30m``, ``250ms``."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like 10s, 5m, 250ms")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    text = str(value).strip().replace(" ", "")
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"invalid duration {value!r}: use a number with a unit, e.g. 10s, 5m, 1h, 250ms")
    return total


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema({"anyOf": [{"type": "number", "minimum": 0},
                              {"type": "string", "pattern": r"^(\d+(\.\d+)?(us|ms|s|m|h|d)?)+$"}]}),
]
def _fsync_word(value: object) -> object:
    """YAML 1.1 reads an unquoted ``off`` as false: take it as the word the user wrote."""
    if value is False:
        return "off"
    return value


FsyncPolicy = Annotated[Literal["full", "normal", "off"], BeforeValidator(_fsync_word)]
TagMatch = dict[str, str | list[str]]
ID_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]*$"


class ItemConfig(BaseModel):
    """Fields every source, stage and sink has."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=ID_PATTERN, description="Unique id of this item, used in `inputs:` and in every error and metric.")
    type: str = Field(description="The item's type (see `edgesieve stages`).")


class SourceConfig(ItemConfig):
    overload: Literal["block", "shed"] = Field(
        "block",
        description="When the pipeline falls behind: `block` the source (back-pressure) or `shed` new batches (counted as `shed`).",
    )
    max_queue: int = Field(64, ge=1, le=100_000, description="Batches that may wait between this source and the pipeline.")


class _Consumer(ItemConfig):
    inputs: list[str] = Field(min_length=1, description="Ids of the sources or stages this item reads from.")
    match: TagMatch | None = Field(
        None,
        description="Only records whose tags match are taken: `{tag: value}` or `{tag: [values]}`; `*` globs allowed. A key that is not a tag matches annotations (`event: anomaly_end`).",
    )


class StageConfig(_Consumer):
    on_error: Literal["dead_letter", "skip", "stop"] = Field(
        "dead_letter",
        description="When the stage fails on a batch: `dead_letter` the batch with the error, `skip` it (counted), or `stop` the pipeline.",
    )


class SinkConfig(_Consumer):
    on_error: Literal["retry", "dead_letter", "stop"] = Field(
        "retry",
        description="When the sink cannot take a batch (full disk, locked file, ...): `retry` it with backoff while the "
                    "pipeline waits (nothing is lost, checkpoints hold), `dead_letter` it to `dead_letter_path`, "
                    "or `stop` the pipeline.",
    )
    dead_letter_path: str | None = Field(
        None, description="NDJSON file for batches the sink could not take (`on_error: dead_letter`); best on another disk.")
    retry_initial: Duration = Field(0.5, gt=0, le=60, description="First wait before retrying a failed write or send (doubles, with jitter).")
    retry_max: Duration = Field(30.0, gt=0, le=3600, description="Longest wait between retries (a server's Retry-After may be longer).")

    @model_validator(mode="after")
    def _dead_letter_needs_a_path(self):
        if self.on_error == "dead_letter" and not self.dead_letter_path:
            raise ValueError("on_error: dead_letter needs dead_letter_path (a file, best on another disk)")
        return self


class BatchingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_records: int = Field(10_000, ge=1, le=10_000_000, description="Largest micro-batch handed to the stages.")
    max_wait: Duration = Field(0.05, le=60, description="Longest a record waits for its micro-batch to fill.")


class CheckpointConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str | None = Field(None, json_schema_extra=OUTPUT, description="Checkpoint file; none means no checkpoints (state is lost on restart).")
    interval: Duration = Field(30.0, gt=0, description="Time between checkpoints while running (one is also written at shutdown).")


class RuntimeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    batching: BatchingConfig = Field(default_factory=BatchingConfig, description="Micro-batching between ingest and stages.")
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig, description="Where and how often state is saved.")
    dead_letter: str | None = Field(
        "deadletter.ndjson", json_schema_extra=OUTPUT, description="NDJSON file that receives every rejected record with its reason; null keeps only counters."
    )
    state_dir: str = Field(".edgesieve", json_schema_extra=OUTPUT, description="Folder for state a stage spills to disk (idle models, outboxes).")
    metrics_port: int | None = Field(None, ge=1, le=65535, description="Serve Prometheus metrics on this port.")
    log_format: Literal["text", "json"] = Field("text", description="`json` for structured logs.")
    outside_paths: Literal["warn", "refuse"] = Field(
        "warn", description="A relative path that climbs out of the pipeline file's folder with `..`: `warn` "
        "(reported by `edgesieve validate`) or `refuse` (an error for validate and run). Absolute paths are always allowed.")
    tick: Duration = Field(0.1, gt=0, le=10, description="How often time-driven stage work (max_wait flushes, idle windows) runs.")
