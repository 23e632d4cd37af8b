"""A test sink that cannot write while a *blocker* file exists (as a full disk would refuse), else appends each
record as one JSON line to ``path``. Its snapshot is the number of lines written, and ``restore`` truncates the file
to it, so a restart from a checkpoint gives exactly the lines of an uninterrupted run (as the ``file`` sink does)."""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Literal

from pydantic import Field

from pipeline.batch import Batch
from pipeline.config import SinkConfig
from pipeline.stage import Sink


class BlockingSinkConfig(SinkConfig):
    type: Literal["blocking"]
    path: str = Field(description="NDJSON output.")
    blocker: str = Field(description="While this file exists, every write fails with ENOSPC.")


class BlockingSink(Sink):
    Config = BlockingSinkConfig

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        self.path = Path(config.path)
        self.lines = sum(1 for _ in open(self.path)) if self.path.exists() else 0

    def write(self, batch: Batch) -> None:
        if os.path.exists(self.config.blocker):
            raise OSError(errno.ENOSPC, "No space left on device", self.config.path)
        with open(self.path, "a") as fh:
            for r in batch.to_records():
                fh.write(json.dumps({"ts": r["ts"], **r["fields"]}) + "\n")
        self.lines += len(batch)

    def snapshot(self):
        return self.lines

    def restore(self, state) -> None:
        kept = self.path.read_text().splitlines(keepends=True)[:int(state)] if self.path.exists() else []
        self.path.write_text("".join(kept))
        self.lines = len(kept)
