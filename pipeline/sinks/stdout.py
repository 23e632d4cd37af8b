"""The ``stdout`` sink: records as NDJSON lines on standard output."""

from __future__ import annotations

import sys
from typing import Literal

from ..batch import Batch
from ..config import SinkConfig
from ..stage import Sink
from .encode import ndjson_lines


class StdoutSinkConfig(SinkConfig):
    type: Literal["stdout"]


class StdoutSink(Sink):
    """Print records as NDJSON."""

    Config = StdoutSinkConfig
    EXAMPLE = {}

    def write(self, batch: Batch) -> None:
        sys.stdout.buffer.write(ndjson_lines(batch))

    def flush(self) -> None:
        sys.stdout.flush()
