"""Retained messages are counted once (real Mosquitto).

A device that publishes with the retain flag (a "last value" topic, common on gateways) has its last message kept by
the broker, which sends a copy to every new subscription. edgesieve subscribes again at every start and reconnect, so
before, each restart counted every such device's last reading once more (values 27-29 twice in the first test).
Each test compares the file sink's output with what was published: every value exactly once.

The paths covered: MQTT 5 with the session kept (retain handling 1: the broker sends no copy), MQTT 3.1.1 (a copy at
every subscribe; dropped by the last payloads the inbox keeps, from its file across a restart), a session that is
gone (MQTT 5 ``persistent: false``: a copy at every start; a reading published while edgesieve was away is taken
once, from its copy), a broker restart mid-run (3.1.1: the copies are known in memory), ``retained: ignore``, and
devices that publish retained at QoS 0 (not journaled: known from ``last_payloads``).
"""

from __future__ import annotations

import json
import uuid
from collections import Counter

import pytest
import yaml

from tests.support.clients import read_ndjson
from tests.support.edgesieve_run import Run, durable_runtime, mqtt_source
from tests.support.waiting import settle, wait_until


def pipeline_file(tmp_path, broker, prefix: str, **source) -> tuple:
    out = tmp_path / "out.ndjson"
    path = tmp_path / "retained.yaml"
    path.write_text(yaml.safe_dump({
        "pipeline": "retained", "sources": [mqtt_source(broker.url, prefix, **source)],
        "sinks": [{"id": "out", "type": "file", "inputs": ["in"], "path": str(out)}],
        "runtime": durable_runtime(tmp_path, "retained", "1h")}))
    return path, out


def written(out) -> Counter:
    return Counter(r["fields"]["v"] for r in read_ndjson(out))


def publish(pub, prefix: str, values, qos: int = 1) -> None:
    """Each value retained on ``{prefix}/d{v % 3}``: the last three are the broker's retained messages."""
    for v in values:
        pub.publish(f"{prefix}/d{v % 3}", json.dumps({"ts": 1_700_000_000.0 + v, "v": v}), qos=qos, retain=True)


def run_once(path, pub, prefix: str, values, expect: int, during=None, qos: int = 1) -> tuple[int, str]:
    """Start ``edgesieve run``, publish ``values`` once it is connected, wait until its sink took ``expect`` records
    in this run (then ``during(run)`` and quiet), stop it; the run's ``retained_copies`` and its log."""
    run = Run(path)
    try:
        wait_until(run.connected, what="the pipeline to connect")
        publish(pub, prefix, values, qos)
        wait_until(lambda: run.count("out", "in") >= expect, what=f"the sink to take {expect} records")
        if during is not None:
            during(run)
        settle(lambda: run.count("out", "in"), quiet=1.0)
        copies = run.count("in", "retained_copies")
    except AssertionError as e:
        raise AssertionError(f"{e}; the run's log:\n{run.stop()[-3000:]}") from None
    return copies, run.stop()


def exactly_once(out, values) -> None:
    got = written(out)
    assert set(got) == set(values), sorted(set(values) ^ set(got))
    assert max(got.values()) == 1, sorted(v for v, n in got.items() if n > 1)


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_restart_does_not_count_the_retained_last_readings_again(broker, tmp_path, clients, protocol):
    prefix = f"t/ret-{uuid.uuid4().hex[:6]}"
    path, out = pipeline_file(tmp_path, broker, prefix, protocol=protocol)
    pub = clients(broker, client_id=f"pub-{uuid.uuid4().hex[:6]}", persistent=True)
    run_once(path, pub, prefix, range(0, 30), 30)
    copies, _ = run_once(path, pub, prefix, range(30, 60), 30)
    copies3, _ = run_once(path, pub, prefix, [], 0)      # a start with nothing new: the copies only
    exactly_once(out, range(60))
    if protocol == "3.1.1":         # 3.1.1 has no retain handling: the copies came and were dropped
        assert copies == 3 and copies3 == 3


@pytest.mark.slow
def test_without_a_session_a_reading_published_while_away_is_taken_once_from_its_copy(broker, tmp_path, clients):
    prefix = f"t/away-{uuid.uuid4().hex[:6]}"
    path, out = pipeline_file(tmp_path, broker, prefix, persistent=False)
    pub = clients(broker, client_id=f"pub-{uuid.uuid4().hex[:6]}", persistent=True)
    run_once(path, pub, prefix, range(0, 30), 30)
    publish(pub, prefix, [31, 32, 33])        # nobody subscribed: only the broker's retained copies keep them
    run_once(path, pub, prefix, [], 3)
    copies, _ = run_once(path, pub, prefix, range(40, 43), 3)
    exactly_once(out, [*range(30), 31, 32, 33, 40, 41, 42])
    assert copies == 3                        # the second start's copies of 31-33, already taken


@pytest.mark.slow
def test_copies_after_a_broker_restart_mid_run_are_not_counted(make_broker, tmp_path, clients):
    broker = make_broker()
    prefix = f"t/brk-{uuid.uuid4().hex[:6]}"
    path, out = pipeline_file(tmp_path, broker, prefix, protocol="3.1.1")
    pub = clients(broker, client_id=f"pub-{uuid.uuid4().hex[:6]}", persistent=True)

    def restart_broker(run):
        broker.restart()
        wait_until(run.connected, what="the pipeline to reconnect")
        wait_until(lambda: run.count("in", "retained_copies") >= 3, what="the copies after the resubscribe")

    copies, _ = run_once(path, pub, prefix, range(0, 30), 30, during=restart_broker)
    exactly_once(out, range(30))
    assert copies == 3


@pytest.mark.slow
def test_retained_ignore_takes_no_copy(broker, tmp_path, clients):
    prefix = f"t/ign-{uuid.uuid4().hex[:6]}"
    pub = clients(broker, client_id=f"pub-{uuid.uuid4().hex[:6]}", persistent=True)
    publish(pub, prefix, [1, 2, 3])                      # retained before the pipeline ever subscribed
    path, out = pipeline_file(tmp_path, broker, prefix, persistent=False, retained="ignore")
    run_once(path, pub, prefix, range(10, 16), 6)
    exactly_once(out, range(10, 16))


@pytest.mark.slow
@pytest.mark.parametrize("sub_qos", [0, 1])
def test_qos0_retained_readings_are_counted_once_across_restarts(broker, tmp_path, clients, sub_qos):
    """Devices that publish retained at QoS 0 (Tasmota, Zigbee2MQTT and Shelly do by default): not journaled, yet a
    restart knows their last readings (the copies come at QoS 0 even on a QoS 1 subscription). Found in review."""
    prefix = f"t/q0-{uuid.uuid4().hex[:6]}"
    sub = mqtt_source(broker.url, prefix)["subscriptions"][0] | {"qos": sub_qos}
    path, out = pipeline_file(tmp_path, broker, prefix, protocol="3.1.1", subscriptions=[sub])
    pub = clients(broker, client_id=f"pub-{uuid.uuid4().hex[:6]}", persistent=True)
    run_once(path, pub, prefix, range(0, 30), 30, qos=0)
    copies, _ = run_once(path, pub, prefix, [], 0, qos=0)        # nothing new: the broker's copies only
    exactly_once(out, range(30))
    assert copies == 3
