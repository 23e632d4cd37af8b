"""A sink that cannot take a batch holds the line: nothing dropped, back-pressure, no checkpoint past it, resumes."""
from __future__ import annotations

import json
import logging
import threading
import time

import pytest

from pipeline import load_pipeline, registry
from pipeline.metrics import PrometheusCollector
from tests.connectors.influx.paced_source import readings

N = 12_000          # readings: more than the sink's queue holds (256 batches of 20)


@pytest.fixture(autouse=True)
def blocking_type(monkeypatch):
    monkeypatch.setitem(registry.SINKS, "blocking", "tests.support.blocking_sink:BlockingSink")


def yaml(tmp_path, on_error="retry", checkpoint=False, extra=""):
    cp = f"checkpoint: {{path: {tmp_path / 'cp.db'}, interval: 0.05}}" if checkpoint else ""
    return f"""
pipeline: holds
sources: [{{id: s, type: paced, devices: 1, seconds: 120, hz: 100, t0: 1000, batch: 20, pause: 0, max_queue: 2}}]
sinks:
  - {{id: out, type: blocking, inputs: [s], path: {tmp_path / 'out.ndjson'}, blocker: {tmp_path / 'full'},
     on_error: {on_error}, retry_initial: 0.01, retry_max: 0.05 {extra}}}
runtime: {{dead_letter: null, batching: {{max_records: 20}}, {cp}}}
"""


@pytest.fixture(autouse=True)
def paced_source(monkeypatch):
    monkeypatch.setitem(registry.SOURCES, "paced", "tests.connectors.influx.paced_source:PacedSource")


EXPECTED = readings(devices=1, seconds=120, hz=100, t0=1000)["t"].tolist()


def written(tmp_path):
    p = tmp_path / "out.ndjson"
    return [json.loads(line)["t"] for line in p.read_text().splitlines()] if p.exists() else []


def until(cond, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def start(p):
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("summary", p.run()))
    t.start()
    return t, box


def test_a_sink_that_cannot_write_holds_its_batches_applies_back_pressure_and_resumes(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    (tmp_path / "full").touch()
    p = load_pipeline(yaml(tmp_path, checkpoint=True))
    t, box = start(p)
    until(lambda: p.metrics.gauges().get(("out", "sink_blocked")) == 1)
    gauges = {s.name: [x.value for x in s.samples] for s in PrometheusCollector(p.metrics).collect()}
    assert gauges["edgesieve_sink_blocked"] == [1.0]
    time.sleep(0.5)
    taken, checkpoints = p.metrics.get("s", "out"), p.metrics.get("runtime", "checkpoints")
    time.sleep(0.5)
    assert p.metrics.get("s", "out") == taken < N              # back-pressure: the source waits
    assert p.metrics.get("runtime", "checkpoints") == checkpoints   # no checkpoint moves past the held data
    (tmp_path / "full").unlink()                               # space freed: it resumes by itself
    t.join(30)
    assert box["summary"].error is None
    assert written(tmp_path) == EXPECTED   # every record, in order, once
    c = box["summary"].counters["out"]
    assert c["blocked_episodes"] == 1 and c["retries"] > 0 and c["out"] == N
    assert p.metrics.gauges()[("out", "sink_blocked")] == 0
    lines = [r.getMessage() for r in caplog.records if "'out'" in r.getMessage()]
    assert sum("cannot take" in m for m in lines) == 1 and sum("takes data again" in m for m in lines) == 1


def test_stopped_while_blocked_no_checkpoint_past_the_held_data_and_the_restart_delivers_it(tmp_path):
    (tmp_path / "full").touch()
    p = load_pipeline(yaml(tmp_path, checkpoint=True))
    t, box = start(p)
    until(lambda: p.metrics.gauges().get(("out", "sink_blocked")) == 1)
    time.sleep(0.2)
    p.stop("SIGTERM")
    t.join(30)
    first = box["summary"]
    assert first.counters["out"]["undelivered"] > 0
    (tmp_path / "full").unlink()
    second = load_pipeline(yaml(tmp_path, checkpoint=True)).run()
    assert second.error is None
    assert written(tmp_path) == EXPECTED   # nothing lost, nothing twice across the restart


def test_on_error_dead_letter_writes_the_batch_to_its_file_and_goes_on(tmp_path):
    (tmp_path / "full").touch()
    dl = tmp_path / "other-disk" / "out.dead.ndjson"
    s = load_pipeline(yaml(tmp_path, on_error="dead_letter", extra=f", dead_letter_path: {dl}")).run()
    assert s.error is None and s.counters["out"]["dead_lettered"] == N
    rows = [json.loads(line) for line in dl.read_text().splitlines()]
    assert [r["record"]["fields"]["t"] for r in rows] == EXPECTED
    assert "No space left on device" in rows[0]["reason"] and rows[0]["item"] == "out"


def test_on_error_stop_stops_the_pipeline_with_the_error_and_no_checkpoint_past_the_batch(tmp_path):
    (tmp_path / "full").touch()
    s = load_pipeline(yaml(tmp_path, on_error="stop", checkpoint=True)).run()
    assert s.stopped_by == "error" and "sink 'out'" in s.error and "on_error: stop" in s.error
    assert "No space left" in s.error and s.counters["out"]["undelivered"] > 0
    (tmp_path / "full").unlink()                               # no checkpoint covers what it did not take
    assert load_pipeline(yaml(tmp_path, on_error="stop", checkpoint=True)).run().error is None
    assert written(tmp_path) == EXPECTED


def test_dead_letter_needs_a_path():
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match="on_error: dead_letter needs dead_letter_path"):
        load_pipeline("""
sources: [{id: s, type: replay, path: x.csv}]
sinks: [{id: o, type: stdout, inputs: [s], on_error: dead_letter}]
""")
