"""The ``file`` sink: records as NDJSON lines, appended to a file.

Its checkpoint state is the file's length, so a restarted pipeline first truncates what was written after the
last checkpoint and then writes it again: the file ends up exactly as after an uninterrupted run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field

from ..batch import Batch
from ..config import OUTPUT, SinkConfig
from ..stage import Context, Sink
from .encode import ndjson_lines


class FileSinkConfig(SinkConfig):
    type: Literal["file"]
    path: str = Field(json_schema_extra=OUTPUT, description="NDJSON file to append to (its folder is created).")
    truncate: bool = Field(False, description="Empty the file when the pipeline starts fresh; a run that resumes from a checkpoint keeps it.")
    fsync: bool = Field(False, description="fsync after every flush (slower, survives power loss).")


class FileSink(Sink):
    """Append records to an NDJSON file."""

    Config = FileSinkConfig
    EXAMPLE = {"path": "out/aggregates.ndjson"}

    def __init__(self, config: FileSinkConfig, ctx: Context):
        super().__init__(config, ctx)
        self.path = Path(config.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "ab")

    def write(self, batch: Batch) -> None:
        data = ndjson_lines(batch)
        self._fh.write(data)
        self.ctx.count("bytes_out", len(data))

    def flush(self) -> None:
        self._fh.flush()
        if self.config.fsync:
            os.fsync(self._fh.fileno())

    def snapshot(self):
        self.flush()
        return {"size": self._fh.tell()}

    def started(self, resumed: bool) -> None:
        if self.config.truncate and not resumed:
            self._fh.truncate(0)
            self._fh.seek(0)

    def restore(self, state) -> None:
        if state:
            self._fh.flush()
            size = min(state["size"], self.path.stat().st_size)  # never pad: a shorter file was changed by someone else
            self._fh.truncate(size)
            self._fh.seek(size)

    def close(self) -> None:
        if not self._fh.closed:
            self.flush()
            self._fh.close()
