"""Stages' timers run on the pipeline's clock, not the wall clock (real Mosquitto, ``edgesieve run``).

The window stage stamps when each key was last seen with its context clock, and the runtime's tick hands every
stage the time as ``now`` (the pipeline clock since this test was written; before, the wall clock, which no
built-in stage read, but a plugin judging idleness by ``now`` would have been a day off here). With a pipeline
clock a day behind the wall clock (an embedding application's own clock, a gateway before NTP), no key may look
idle: no window is emitted early (``idle_closed``) and no reading that follows is late."""

from __future__ import annotations

import time
import uuid

import pytest
import yaml

from tests.support.clients import read_ndjson
from tests.support.edgesieve_run import Run, mqtt_source, publish_all
from tests.support.waiting import settle, wait_until


@pytest.mark.slow
def test_idle_close_is_judged_on_the_pipeline_clock(broker, tmp_path, clients):
    prefix = f"t/clock-{uuid.uuid4().hex[:6]}"
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({
        "pipeline": "clock",
        "sources": [mqtt_source(broker.url, prefix)],
        "stages": [{"id": "win", "type": "window", "inputs": ["in"], "size": "10s", "key": ["device"],
                    "idle_close": "5m", "aggregates": {"v": ["sum"]}}],
        "sinks": [{"id": "out", "type": "file", "inputs": ["win"], "path": str(tmp_path / "out.ndjson")}],
        "runtime": {"batching": {"max_wait": 0.02}, "tick": 0.02},
    }))
    run = Run(path, offset=-86_400.0)
    wait_until(run.connected, what="edgesieve to connect")
    time.sleep(0.3)
    pub = clients(broker, client_id=f"pub-{uuid.uuid4().hex[:6]}")
    base = 1_700_000_000.0
    for part in range(4):                      # readings in four bursts, ticks in between
        publish_all(pub, ((f"{prefix}/d{i % 2}", {"ts": base + i * 0.01, "v": 1}) for i in range(part * 50, part * 50 + 50)))
        wait_until(lambda: run.count("in", "out") >= part * 50 + 50, what=f"burst {part}")
        time.sleep(0.2)
    settle(lambda: run.count("in", "out"), quiet=0.5)
    idle, late = run.count("win", "idle_closed"), run.count("win", "late")
    run.stop()
    assert idle == 0 and late == 0, f"{idle} windows idle-closed and {late} readings late on a clock a day behind"
    windows = read_ndjson(tmp_path / "out.ndjson")
    assert sorted((w["tags"]["device"], w["fields"]["count"]) for w in windows) == [("d0", 100), ("d1", 100)]
