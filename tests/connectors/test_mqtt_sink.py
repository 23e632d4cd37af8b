"""The mqtt sink against a real Mosquitto: topics from tags, JSON payloads, the offline queue across a disconnect."""

import json
import time

import numpy as np
import yaml

from connectors.mqtt.sink import MqttSink, MqttSinkConfig
from pipeline.batch import Batch
from pipeline.testing import make_context

T0 = 1_700_000_000.0


def records(n, start=0, **tags):
    return Batch.from_records([{"ts": T0 + i, "tags": {"site": "p1", "device": f"d{i % 2}", **tags},
                                "fields": {"score": i / 10, "alert": True}} for i in range(start, start + n)])


def make_sink(broker, **options):
    cfg = MqttSinkConfig.model_validate({"id": "alerts_out", "type": "mqtt", "inputs": ["x"], "url": broker.url,
                                         "node": "gw-sink", "reconnect": {"min_delay": 0.05, "max_delay": 0.3},
                                         **options})
    ctx, dead = make_context("alerts_out")
    return MqttSink(cfg, ctx), ctx, dead


def test_pipeline_publishes_records_to_topics_from_tags(broker, topic_prefix, tmp_path, run_pipeline, clients):
    csv = tmp_path / "r.csv"
    csv.write_text("ts,site,device,t\n" + "".join(f"{T0 + i},plant{i % 2},pump{i % 3},{20 + i}\n" for i in range(12)))
    sub = clients(broker).subscribe(f"{topic_prefix}/alerts/#")
    doc = {"pipeline": "alerts", "sources": [{"id": "r", "type": "replay", "path": str(csv), "tags": ["site", "device"]}],
           "sinks": [{"id": "out", "type": "mqtt", "inputs": ["r"], "url": broker.url, "node": "gw-sink", "qos": 1,
                      "topic_template": f"{topic_prefix}/alerts/{{site}}/{{device}}"}]}
    summary = run_pipeline(yaml.safe_dump(doc)).wait()
    assert summary.error is None
    msgs = sub.wait_for(12)
    assert len(msgs) == 12
    first = next(m for m in msgs if json.loads(m.payload)["ts"] == T0 + 4)
    assert first.topic == f"{topic_prefix}/alerts/plant0/pump1"
    assert json.loads(first.payload) == {"ts": T0 + 4, "tags": {"site": "plant0", "device": "pump1"}, "fields": {"t": 24.0}}


def test_offline_queue_is_sent_after_reconnect_in_order(make_broker, topic_prefix, clients):
    b = make_broker()
    sub = clients(b, client_id=f"{topic_prefix}-sub", persistent=True).subscribe(f"{topic_prefix}/#", qos=1)
    sink, ctx, dead = make_sink(b, topic_template=f"{topic_prefix}/{{site}}/{{device}}")
    try:
        assert sink.conn.wait_connected(5)
        sink.write(records(5))
        assert len(sub.wait_for(5)) == 5
        b.stop()
        deadline = time.monotonic() + 5
        while sink.conn.connected.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
        sink.write(records(20, start=5))
        assert sink.queued == 20 and ctx.metrics.get("alerts_out", "queued_offline") == 20
        b.start()
        scores = []
        deadline = time.monotonic() + 10
        while len(scores) < 25 and time.monotonic() < deadline:
            scores = list(dict.fromkeys(json.loads(m.payload)["fields"]["score"] for m in sub.wait_for(25, 0.1)))
        assert scores == [i / 10 for i in range(25)]             # in order (a redelivered duplicate is allowed)
        assert sink.queued == 0 and not dead
    finally:
        sink.close()


def test_offline_queue_is_bounded_and_counts_drops(make_broker, topic_prefix, clients):
    b = make_broker()
    sub = clients(b, client_id=f"{topic_prefix}-sub", persistent=True).subscribe(f"{topic_prefix}/#", qos=1)
    sink, ctx, _ = make_sink(b, topic_template=f"{topic_prefix}/{{site}}/{{device}}", offline_queue=5)
    try:
        assert sink.conn.wait_connected(5)
        b.stop()
        while sink.conn.connected.is_set():
            time.sleep(0.01)
        sink.write(records(8))
        assert ctx.metrics.get("alerts_out", "dropped_offline") == 3
        b.start()
        msgs = sub.wait_for(5)
        time.sleep(0.2)
        assert [json.loads(m.payload)["fields"]["score"] for m in sub.messages] == [0.3, 0.4, 0.5, 0.6, 0.7]
        assert len(msgs) == 5
    finally:
        sink.close()


def test_record_without_a_template_tag_is_dead_lettered(broker, topic_prefix, clients):
    sub = clients(broker).subscribe(f"{topic_prefix}/#")
    sink, ctx, dead = make_sink(broker, topic_template=f"{topic_prefix}/{{site}}/{{line}}")
    try:
        assert sink.conn.wait_connected(5)
        batch = records(3)
        sink.write(batch.with_tags(line=np.array(["l1", None, "a/b"], dtype=object)))
        assert [m.topic for m in sub.wait_for(1)] == [f"{topic_prefix}/p1/l1"]
        assert len(dead) == 1 and len(dead[0][1]) == 2
        assert "needs tag 'line'" in dead[0][2][0] and "cannot be a topic level" in dead[0][2][1]
    finally:
        sink.close()
