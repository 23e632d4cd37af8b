"""The ``sqlite`` sink: aggregates kept on the gateway in one SQLite file (the embedded default when no cloud is set).

One row per point in table ``points(measurement, tags, ts, fields)``; tags and fields are JSON (query them with
``json_extract``). ``(measurement, tags, ts)`` is the key and writing it again merges the fields, so a pipeline that
replays from its checkpoint after a crash leaves exactly the rows of an uninterrupted run. WAL mode; one commit
per batch, fsync policy as the outbox's (``full`` survives power loss).

>>> import tempfile, os, sqlite3
>>> from pipeline.batch import Batch
>>> from pipeline.testing import make_context
>>> path = os.path.join(tempfile.mkdtemp(), "agg.db")
>>> sink = SqliteSink(SqliteConfig(id="local", type="sqlite", inputs=["w"], path=path), make_context("local")[0])
>>> b = Batch.from_records([{"ts": 10.0, "tags": {"device": "a"}, "fields": {"t_mean": 1.5, "count": 3}}])
>>> sink.write(b); sink.write(b); sink.close()
>>> sqlite3.connect(path).execute("SELECT measurement, tags, ts, json_extract(fields, '$.t_mean') FROM points").fetchall()
[('edgesieve', '{"device":"a"}', 10.0, 1.5)]
"""
from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from pipeline.batch import Batch
from pipeline.config import OUTPUT, Duration, FsyncPolicy, SinkConfig
from pipeline.stage import Context, Sink

_SYNC = {"full": "FULL", "normal": "NORMAL", "off": "OFF"}


class SqliteConfig(SinkConfig):
    type: Literal["sqlite"]
    path: str = Field("edgesieve.db", json_schema_extra=OUTPUT, description="SQLite database file (created with its folder).")
    measurement: str = Field("edgesieve", min_length=1, description="Value of the `measurement` column of every row.")
    fsync: FsyncPolicy = Field("full", description="`full`: survives power loss; `normal`: survives a crash; `off`: OS decides.")
    retention: Duration | None = Field(None, gt=0, description="Delete rows older than this (by `ts`, against the newest row) after each batch.")


class SqliteSink(Sink):
    """Aggregates into a local SQLite file (see module docstring)."""

    Config = SqliteConfig
    EXAMPLE = {"path": "data/aggregates.db"}

    def __init__(self, config: SqliteConfig, ctx: Context):
        super().__init__(config, ctx)
        path = Path(config.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={_SYNC[config.fsync]}")
        self._db.execute("CREATE TABLE IF NOT EXISTS points (measurement TEXT NOT NULL, tags TEXT NOT NULL, "
                         "ts REAL NOT NULL, fields TEXT NOT NULL, PRIMARY KEY (measurement, tags, ts))")
        self._db.execute("CREATE INDEX IF NOT EXISTS points_ts ON points (ts)")

    def write(self, batch: Batch) -> None:
        n = len(batch)
        tags = [(k, v.tolist()) for k, v in batch.tags.items()]
        fields = [(k, v.tolist()) for k, v in batch.fields.items()
                  if v.dtype == bool or np.issubdtype(v.dtype, np.number)]
        ts = batch.ts.tolist()
        rows, dropped = [], 0
        for i in range(n):
            f = {}
            for k, v in fields:
                x = v[i]
                if isinstance(x, float) and not math.isfinite(x):
                    dropped += not math.isnan(x)     # ±inf is no JSON (it broke every json_extract): counted, left out
                    continue
                f[k] = x
            if f:
                t = {k: str(v[i]) for k, v in tags if v[i] is not None}
                rows.append((self.config.measurement, json.dumps(t, sort_keys=True, separators=(",", ":")), ts[i],
                             json.dumps(f, sort_keys=True, separators=(",", ":"), allow_nan=False)))
        if dropped:
            self.ctx.count("not_finite", dropped)
        if not rows:
            return
        self._db.execute("BEGIN IMMEDIATE")
        self._db.executemany("INSERT INTO points VALUES (?, ?, ?, ?) ON CONFLICT (measurement, tags, ts) "
                             "DO UPDATE SET fields = json_patch(points.fields, excluded.fields)", rows)
        if self.config.retention:
            self._db.execute("DELETE FROM points WHERE ts < (SELECT max(ts) FROM points) - ?", (self.config.retention,))
        self._db.execute("COMMIT")
        self.ctx.count("rows_written", len(rows))

    def close(self) -> None:
        self._db.close()
