"""One message never stops ingestion, even one journaled before it is decoded (real Mosquitto, ``edgesieve run``).

A valid JSON integer of 400 digits passed the per-message checks and failed when the micro-batch was built
(``OverflowError``), which stopped the pipeline; the message was already journaled and acknowledged, so every
restart replayed it and stopped again. Now the field is dead-lettered on its own and the rest of the reading kept.
Found by a field-conditions review.
"""

from __future__ import annotations

import json
import uuid

import pytest
import yaml

from tests.support.clients import read_ndjson
from tests.support.edgesieve_run import Run, durable_runtime, mqtt_source, publish_all
from tests.support.waiting import settle, wait_until

HUGE = "1" + "0" * 400


@pytest.mark.slow
def test_an_integer_beyond_a_float_is_one_dead_field_and_restarts_go_on(broker, tmp_path, clients):
    prefix = f"t/poison-{uuid.uuid4().hex[:6]}"
    path, out = tmp_path / "poison.yaml", tmp_path / "out.ndjson"
    path.write_text(yaml.safe_dump({
        "pipeline": "poison", "sources": [mqtt_source(broker.url, prefix)],
        "sinks": [{"id": "out", "type": "file", "inputs": ["in"], "path": str(out)}],
        "runtime": durable_runtime(tmp_path, "poison", "1h")}))
    pub = clients(broker, client_id=f"pub-{uuid.uuid4().hex[:6]}", persistent=True)
    good = [(f"{prefix}/d{i % 3}", json.dumps({"ts": 1_700_000_000 + i, "v": i})) for i in range(100)]
    bad = (f"{prefix}/bad", '{"ts": 1700000100, "v": 1000, "big": %s}' % HUGE)
    for phase in (good[:50] + [bad] + good[50:], []):          # then a restart with nothing new
        run = Run(path)
        try:
            wait_until(run.connected, what="the pipeline to connect")
            publish_all(pub, phase)
            wait_until(lambda: run.count("out", "in") >= len(phase), what="the sink to take every reading")
            settle(lambda: run.count("out", "in"), quiet=0.8)
        finally:
            err = run.stop()                              # asserts a clean exit: it did not stop on the message
    assert sorted(r["fields"]["v"] for r in read_ndjson(out)) == [*range(100), 1000]
    dead = read_ndjson(tmp_path / "dead.ndjson")
    assert len(dead) == 1 and "'big'" in json.dumps(dead[0]) and "401 digits" in json.dumps(dead[0]), dead
    assert "OverflowError" not in err
