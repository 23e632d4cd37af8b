"""The sqlite sink on its own: what it stores for values JSON cannot hold (found by a field-conditions review)."""

from __future__ import annotations

import sqlite3

from connectors.local.sqlite import SqliteConfig, SqliteSink
from pipeline.batch import Batch
from pipeline.testing import make_context


def test_infinite_aggregates_are_left_out_and_counted_and_a_replay_is_accepted(tmp_path):
    """Before, ±inf was stored as `Infinity`: invalid JSON that broke `json_extract` for the whole table, and the
    replay of the same batch after a crash failed in `json_patch` (the sink held the pipeline, retrying)."""
    ctx, _ = make_context("local")
    sink = SqliteSink(SqliteConfig(id="local", type="sqlite", inputs=["w"], path=str(tmp_path / "a.db")), ctx)
    b = Batch.from_records([{"ts": 10.0, "tags": {"device": "b"}, "fields": {"t_sum": float("inf"), "count": 2}},
                            {"ts": 10.0, "tags": {"device": "a"}, "fields": {"t_sum": 1.0, "count": 2}}])
    sink.write(b)
    sink.write(b)                                       # the replay after a crash
    sink.close()
    db = sqlite3.connect(tmp_path / "a.db")
    got = db.execute("SELECT tags, json_extract(fields, '$.count'), json_extract(fields, '$.t_sum') FROM points "
                     "ORDER BY tags").fetchall()
    assert got == [('{"device":"a"}', 2, 1.0), ('{"device":"b"}', 2, None)]
    assert ctx.metrics.get("local", "not_finite") == 2
