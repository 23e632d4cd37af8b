"""The mqtt source in real pipelines against a real Mosquitto: round trip, codecs, bad input, restarts, security."""

import base64
import io
import json
import logging
import time
import uuid

import numpy as np
import pytest
import yaml
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.support.clients import read_ndjson

T0 = 1_700_000_000.0
FAST = {"reconnect": {"min_delay": 0.05, "max_delay": 0.5}, "emit_interval": 0.01}


def pipeline_yaml(tmp_path, source: dict, name: str = "p", sinks: list | None = None, stages: list | None = None) -> str:
    doc = {"pipeline": name,
           "sources": [{"id": "in", "type": "mqtt", "node": "gw1", **FAST, **source}],
           "stages": stages or [],
           "sinks": sinks or [{"id": "out", "type": "file", "inputs": ["in"], "path": str(tmp_path / "out.ndjson")}],
           "runtime": {"batching": {"max_wait": 0.02}, "tick": 0.02, "dead_letter": str(tmp_path / "dead.ndjson"),
                       "state_dir": str(tmp_path / "state")}}
    return yaml.safe_dump(doc, sort_keys=False)


def start(run_pipeline, clients, broker, tmp_path, source: dict, client_kw: dict | None = None, **kw):
    """Run a pipeline and wait until its source is subscribed (its live online status arrived)."""
    node = source.setdefault("node", f"gw-{uuid.uuid4().hex[:8]}")
    watcher = clients(broker, **(client_kw or {})).subscribe(f"edgesieve/{node}/+/status")
    p = run_pipeline(pipeline_yaml(tmp_path, {"url": broker.url, **source}, **kw))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and p.thread.is_alive():
        if any(json.loads(m.payload)["status"] == "online" for m in watcher.messages):
            return p
        time.sleep(0.01)
    return p


def test_round_trip_with_template_tags_status_and_wildcards(broker, topic_prefix, tmp_path, run_pipeline, clients):
    watcher = clients(broker).subscribe("edgesieve/gw1/p/status")
    p = run_pipeline(pipeline_yaml(tmp_path, {
        "url": broker.url, "node": "gw1",
        "subscriptions": [{"topic": f"{topic_prefix}/sensors/#", "qos": 1, "codec": "json",
                           "topic_template": f"{topic_prefix}/sensors/{{site}}/{{device}}/{{kind}}"}]}))
    status = watcher.wait_for(1)
    assert json.loads(status[-1].payload) == {"status": "online", "node": "gw1", "pipeline": "p", "version": "0.1.0"}
    assert status[-1].retain or len(status) == 1
    pub = clients(broker)
    sent_bytes = 0
    for i in range(30):
        pub.publish(f"{topic_prefix}/sensors/plant{i % 2}/pump{i % 3}/vibration", {"ts": T0 + i, "rms": i / 10})
        sent_bytes += len(json.dumps({"ts": T0 + i, "rms": i / 10}))
    pub.publish(f"{topic_prefix}/sensors/plant1/pump7", {"ts": T0, "rms": 1.0})      # does not fit the template
    sent_bytes += len(json.dumps({"ts": T0, "rms": 1.0}))
    assert p.wait_counter("out", "out", 30) == 30
    summary = p.stop()
    assert summary.error is None
    assert summary.counters["in"]["bytes_in"] == sent_bytes          # bandwidth accounting: every payload byte
    out = read_ndjson(tmp_path / "out.ndjson")
    assert sorted(r["fields"]["rms"] for r in out) == [i / 10 for i in range(30)]
    r5 = next(r for r in out if r["ts"] == T0 + 5)
    assert r5["tags"] == {"site": "plant1", "device": "pump2", "kind": "vibration"}
    dead = read_ndjson(tmp_path / "dead.ndjson")
    assert len(dead) == 1 and "topic_mismatch" in dead[0]["reason"] and "pump7" in dead[0]["reason"]
    assert json.loads(watcher.wait_for(2)[-1].payload)["status"] == "offline"


def _npy(a):
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def test_every_codec_over_the_broker(broker, topic_prefix, tmp_path, run_pipeline, clients):
    tp = topic_prefix
    p = start(run_pipeline, clients, broker, tmp_path, {"subscriptions": [
        {"topic": f"{tp}/json/+", "codec": "json", "topic_template": f"{tp}/json/{{device}}"},
        {"topic": f"{tp}/batch/+", "codec": "json-batch", "topic_template": f"{tp}/batch/{{device}}", "qos": 0},
        {"topic": f"{tp}/senml", "codec": "senml", "qos": 2},
        {"topic": f"{tp}/cam/+", "codec": "frame", "topic_template": f"{tp}/cam/{{camera}}", "dtype": "uint8"}]})
    pub = clients(broker)
    pub.publish(f"{tp}/json/d1", {"ts": "2023-11-14T22:13:20Z", "t": 1.5})
    pub.publish(f"{tp}/batch/d2", {"readings": [{"ts": (T0 + i) * 1e3, "t": i} for i in range(100)]}, qos=0)
    pub.publish(f"{tp}/senml", [{"bn": "urn:dev:x:", "bt": T0, "n": "t", "v": 3}, {"n": "h", "v": 40}], qos=2)
    frame = np.arange(12, dtype=np.uint16).reshape(3, 4)
    pub.publish(f"{tp}/cam/c1", _npy(frame))
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("dtype", "uint8"), ("shape", "2,3"), ("ts", str(T0))]
    pub.publish(f"{tp}/cam/c2", bytes(range(6)), properties=props)
    assert p.wait_counter("in", "out", 104) == 104
    p.stop()
    out = read_ndjson(tmp_path / "out.ndjson")
    by = {}
    for r in out:
        by.setdefault(r["tags"].get("device") or r["tags"].get("camera"), []).append(r)
    assert by["d1"] == [{"ts": T0, "tags": {"device": "d1"}, "fields": {"t": 1.5}}]
    assert [r["ts"] for r in by["d2"]] == [T0 + i for i in range(100)]
    assert by["urn:dev:x"] == [{"ts": T0, "tags": {"device": "urn:dev:x"}, "fields": {"t": 3.0, "h": 40.0}}]
    assert by["c1"][0]["ts_source"] == "arrival" and by["c2"][0]["ts"] == T0


def test_bad_inputs_are_dead_lettered_and_the_pipeline_goes_on(broker, topic_prefix, tmp_path, run_pipeline, clients):
    node = f"gw-{uuid.uuid4().hex[:8]}"
    dl = clients(broker).subscribe(f"edgesieve/{node}/deadletter")
    p = start(run_pipeline, clients, broker, tmp_path, {
        "node": node, "deadletter_max_bytes": 64,
        "subscriptions": [{"topic": f"{topic_prefix}/#", "topic_template": f"{topic_prefix}/{{device}}",
                           "codec": "json", "max_payload_bytes": 2000, "max_json_depth": 6}]})
    pub = clients(broker)
    bad = {
        "undecodable": b"\xff\xfe\x00garbage",
        "wrong_type": {"ts": T0, "t": ["hot"]},
        "missing_field": None,  # below, with a json-batch object
        "non_finite": b'{"ts": 1700000000, "t": NaN}',
        "payload_too_large": json.dumps({"ts": T0, "pad": "x" * 5000}).encode(),
        "json_too_deep": b'{"t": ' + b"[" * 40 + b"]" * 40 + b"}",
        "topic_mismatch": b'{"t": 1}',
        "bad_timestamp": {"ts": "not a time", "t": 1},
    }
    for reason, payload in bad.items():
        if payload is None:
            continue
        topic = f"{topic_prefix}/a/b" if reason == "topic_mismatch" else f"{topic_prefix}/dev"
        pub.publish(topic, payload)
    pub.publish(f"{topic_prefix}/dev", {"ts": T0, "t": 20.0})       # a good one after all the bad ones
    assert p.wait_counter("out", "out", 1) == 1
    expected = [r for r, v in bad.items() if v is not None]
    msgs = dl.wait_for(len(expected))
    p.stop()
    got = {json.loads(m.payload)["reason"]: json.loads(m.payload) for m in msgs}
    assert sorted(got) == sorted(expected)
    big = got["payload_too_large"]
    assert big["truncated"] and len(base64.b64decode(big["payload_b64"])) == 64 and big["payload_bytes"] > 5000
    assert got["topic_mismatch"]["topic"] == f"{topic_prefix}/a/b"
    assert base64.b64decode(got["undecodable"]["payload_b64"]) == bad["undecodable"]
    for reason in expected:
        assert p.counter("in", f"dead_lettered.{reason}") == 1, reason
    assert p.counter("in", "dead_lettered") == len(expected)
    assert len(read_ndjson(tmp_path / "dead.ndjson")) == len(expected)
    assert [r["fields"] for r in read_ndjson(tmp_path / "out.ndjson")] == [{"t": 20.0}]


def test_json_batch_object_without_readings_key_is_missing_field(broker, topic_prefix, tmp_path, run_pipeline, clients):
    p = start(run_pipeline, clients, broker, tmp_path, {"subscriptions": [
        {"topic": f"{topic_prefix}/b", "codec": "json-batch"}]})
    clients(broker).publish(f"{topic_prefix}/b", {"items": [{"t": 1}]})
    assert p.wait_counter("in", "dead_lettered.missing_field", 1) == 1
    p.stop()


@pytest.mark.slow
def test_qos1_nothing_lost_when_the_broker_restarts_twice(make_broker, topic_prefix, tmp_path, run_pipeline, clients):
    b = make_broker()
    p = start(run_pipeline, clients, b, tmp_path, {"subscriptions": [
        {"topic": f"{topic_prefix}/seq", "codec": "json", "qos": 1}]})
    pub = clients(b, client_id=f"{topic_prefix}-pub", persistent=True)
    n, per_phase = 0, 300
    for phase in range(3):
        infos = [pub.publish(f"{topic_prefix}/seq", {"ts": T0 + n + i, "seq": n + i}, wait=False) for i in range(per_phase)]
        for info in infos:
            info.wait_for_publish(10)
        n += per_phase
        if phase < 2:
            p.wait_counter("in", "out", n // 2)       # mid-stream: some processed, some in flight
            b.restart()
            deadline = time.monotonic() + 10
            while not pub.c.is_connected() and time.monotonic() < deadline:   # the test publisher reconnects
                time.sleep(0.01)
    assert p.wait_counter("out", "out", n, timeout=20) >= n
    last, deadline = -1, time.monotonic() + 10      # redeliveries count too: wait until nothing more arrives
    while p.counter("out", "out") != last and time.monotonic() < deadline:
        last = p.counter("out", "out")
        time.sleep(0.3)
    p.stop()
    assert p.counter("in", "out") >= n
    seqs = [r["fields"]["seq"] for r in read_ndjson(tmp_path / "out.ndjson")]
    assert set(seqs) == set(float(i) for i in range(n)), f"lost: {sorted(set(range(n)) - set(map(int, seqs)))[:10]}"


@pytest.mark.slow
def test_persistent_session_gets_what_was_published_while_down(broker, topic_prefix, tmp_path, run_pipeline, clients):
    src = {"node": f"gw-{uuid.uuid4().hex[:8]}", "subscriptions": [{"topic": f"{topic_prefix}/x", "codec": "json", "qos": 1}]}
    p1 = start(run_pipeline, clients, broker, tmp_path, src, name="persist")
    pub = clients(broker)
    pub.publish(f"{topic_prefix}/x", {"ts": T0, "v": 0})
    assert p1.wait_counter("out", "out", 1) == 1
    p1.stop()
    for i in range(1, 51):                            # the pipeline is down
        pub.publish(f"{topic_prefix}/x", {"ts": T0 + i, "v": i})
    p2 = run_pipeline(pipeline_yaml(tmp_path, {"url": broker.url, **src}, name="persist"))
    assert p2.wait_counter("out", "out", 50) == 50
    p2.stop()
    assert sorted(r["fields"]["v"] for r in read_ndjson(tmp_path / "out.ndjson")) == [float(i) for i in range(51)]


def test_shared_subscription_splits_messages(broker, topic_prefix, tmp_path, run_pipeline, clients):
    runs = []
    for k in range(2):
        d = tmp_path / f"i{k}"
        runs.append(start(run_pipeline, clients, broker, d, {"subscriptions": [
            {"topic": f"{topic_prefix}/+", "share_group": "g1", "codec": "json", "qos": 1}]}, name=f"i{k}"))
    pub = clients(broker)
    for i in range(40):
        pub.publish(f"{topic_prefix}/d{i % 4}", {"ts": T0 + i, "i": i})
    deadline = time.monotonic() + 10
    while sum(r.counter("in", "out") for r in runs) < 40 and time.monotonic() < deadline:
        time.sleep(0.02)
    counts = [r.counter("in", "out") for r in runs]
    for r in runs:
        r.stop()
    assert sum(counts) == 40 and all(c > 0 for c in counts), counts


def test_tls_and_password_round_trip(make_broker, tls_files, topic_prefix, tmp_path, run_pipeline, clients, monkeypatch, caplog):
    b = make_broker(users={"edge": "pa55-word!"}, tls=tls_files)
    monkeypatch.setenv("MQTT_PASSWORD", "pa55-word!")
    caplog.set_level(logging.DEBUG)
    p = start(run_pipeline, clients, b, tmp_path, {
        "username": "edge", "password_env": "MQTT_PASSWORD", "tls": {"ca_file": str(tls_files.ca)},
        "subscriptions": [{"topic": f"{topic_prefix}/t", "codec": "json"}]},
        client_kw={"ca": tls_files.ca, "user": "edge", "password": "pa55-word!"})
    pub = clients(b, ca=tls_files.ca, user="edge", password="pa55-word!")
    pub.publish(f"{topic_prefix}/t", {"ts": T0, "x": 1})
    assert p.wait_counter("out", "out", 1) == 1
    assert p.stop().error is None
    assert "pa55-word!" not in caplog.text


def test_bad_password_stops_with_a_clear_error(make_broker, tls_files, topic_prefix, tmp_path, run_pipeline, tmp_path_factory, caplog):
    b = make_broker(users={"edge": "right"}, tls=tls_files)
    pw = tmp_path / "pw"
    pw.write_text("wrong-secret\n")
    p = run_pipeline(pipeline_yaml(tmp_path, {
        "url": b.url, "username": "edge", "password_file": str(pw), "tls": {"ca_file": str(tls_files.ca)},
        "subscriptions": [{"topic": f"{topic_prefix}/t"}]}))
    summary = p.wait(10)
    assert "refused the connection" in summary.error and "password" in summary.error
    assert "wrong-secret" not in summary.error and "wrong-secret" not in caplog.text


def test_untrusted_certificate_stops_with_a_clear_error(make_broker, tls_files, topic_prefix, tmp_path, run_pipeline):
    from tests.support.mosquitto import make_tls_files

    other = make_tls_files(tmp_path / "other-pki", ca_name="someone else")
    b = make_broker(tls=tls_files)
    p = run_pipeline(pipeline_yaml(tmp_path, {"url": b.url, "tls": {"ca_file": str(other.ca)},
                                              "subscriptions": [{"topic": f"{topic_prefix}/t"}]}))
    summary = p.wait(10)
    assert "not trusted" in summary.error and "ca_file" in summary.error


def test_config_errors_name_the_field():
    from pipeline.errors import ConfigError
    from pipeline.loader import parse_pipeline

    base = {"pipeline": "p", "sinks": [{"id": "o", "type": "stdout", "inputs": ["in"]}]}
    for source, needle in [({"url": "http://x", "subscriptions": [{"topic": "a"}]}, "mqtt://"),
                           ({"subscriptions": [{"topic": "a", "qos": 3}]}, "qos"),
                           ({"subscriptions": [{"topic": "a"}], "password": "x", "password_env": "Y", "username": "u"}, "one of"),
                           ({"subscriptions": [{"topic": "a", "share_group": "g"}], "protocol": "3.1.1"}, "share_group"),
                           ({"subscriptions": [{"topic": "a", "codec": "xml"}]}, "codec")]:
        text = yaml.safe_dump({**base, "sources": [{"id": "in", "type": "mqtt", **source}]})
        with pytest.raises(ConfigError, match=needle):
            parse_pipeline(text, env={})


def test_mqtt_311_round_trip(broker, topic_prefix, tmp_path, run_pipeline, clients):
    p = start(run_pipeline, clients, broker, tmp_path, {"protocol": "3.1.1", "subscriptions": [
        {"topic_template": f"{topic_prefix}/{{device}}", "codec": "json", "qos": 1}]})
    pub = clients(broker)
    for i in range(5):
        pub.publish(f"{topic_prefix}/d{i}", {"ts": T0 + i, "x": i})
    assert p.wait_counter("out", "out", 5) == 5
    assert p.stop().error is None


def test_insecure_tls_warns(make_broker, tls_files, topic_prefix, tmp_path, run_pipeline, clients, caplog):
    b = make_broker(tls=tls_files)
    p = start(run_pipeline, clients, b, tmp_path, {"tls": {"ca_file": str(tls_files.ca), "insecure": True},
                                                   "subscriptions": [{"topic": f"{topic_prefix}/t"}]},
              client_kw={"ca": tls_files.ca})
    assert p.stop().error is None
    assert "NOT verified" in caplog.text


def test_unacknowledged_messages_are_capped_by_receive_maximum(broker, topic_prefix, clients):
    """Manual acks: until the pipeline commits, the broker sends no more than receive_maximum QoS 1 messages."""
    import threading

    from connectors.mqtt.source import MqttSource, MqttSourceConfig
    from pipeline.batch import Batch
    from pipeline.testing import make_context

    cfg = MqttSourceConfig.model_validate({
        "id": "in", "type": "mqtt", "url": broker.url, "node": f"gw-{uuid.uuid4().hex[:8]}", "receive_maximum": 5,
        "emit_interval": 0.01, "subscriptions": [{"topic": f"{topic_prefix}/x", "codec": "json", "qos": 1}]})
    src = MqttSource(cfg, make_context("in")[0])
    got: list[tuple[Batch, int]] = []
    stop = threading.Event()
    t = threading.Thread(target=src.run, args=(lambda b, position=None: got.append((b, position)), stop))
    t.start()
    try:
        assert src.conn.wait_connected(5)
        time.sleep(0.2)
        pub = clients(broker)
        for i in range(20):
            pub.publish(f"{topic_prefix}/x", {"ts": T0 + i, "i": i})

        def received():
            return sum(len(b) for b, _ in got)

        time.sleep(0.5)
        assert received() == 5                         # nothing acknowledged yet: the broker holds the rest
        deadline = time.monotonic() + 10
        while received() < 20 and time.monotonic() < deadline:
            src.committed(got[-1][1])                  # the pipeline "processed" what it has: ack, get more
            time.sleep(0.05)
        assert sorted(r["fields"]["i"] for b, _ in got for r in b.to_records()) == [float(i) for i in range(20)]
    finally:
        stop.set()
        t.join(10)


def test_messages_not_committed_before_a_crash_are_delivered_again(broker, topic_prefix, clients):
    """At-least-once: a source that stops before the pipeline committed gets the messages again on restart."""
    import threading

    from connectors.mqtt.source import MqttSource, MqttSourceConfig
    from pipeline.testing import make_context

    cfg = MqttSourceConfig.model_validate({
        "id": "in", "type": "mqtt", "url": broker.url, "node": f"gw-{uuid.uuid4().hex[:8]}", "client_id": f"{topic_prefix}-c",
        "emit_interval": 0.01, "subscriptions": [{"topic": f"{topic_prefix}/x", "codec": "json", "qos": 1}]})

    def run_source(commit: bool):
        src = MqttSource(cfg, make_context("in")[0])
        got, stop = [], threading.Event()

        def emit(batch, position=None):
            got.extend(r["fields"]["i"] for r in batch.to_records())
            if commit:
                src.committed(position)

        t = threading.Thread(target=src.run, args=(emit, stop))
        t.start()
        assert src.conn.wait_connected(5)
        return src, got, stop, t

    src, got, stop, t = run_source(commit=False)
    time.sleep(0.2)
    pub = clients(broker)
    for i in range(10):
        pub.publish(f"{topic_prefix}/x", {"ts": T0 + i, "i": i})
    deadline = time.monotonic() + 5
    while len(got) < 10 and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    t.join(10)                                         # "crash": processed, never committed
    assert sorted(got) == [float(i) for i in range(10)]
    src, again, stop, t = run_source(commit=True)
    deadline = time.monotonic() + 5
    while len(again) < 10 and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    t.join(10)
    assert sorted(again) == [float(i) for i in range(10)]


def test_a_live_source_without_checkpoints_is_warned_about(broker, topic_prefix, tmp_path, run_pipeline, clients, caplog):
    p = start(run_pipeline, clients, broker, tmp_path, {"subscriptions": [{"topic": f"{topic_prefix}/x"}]})
    p.stop()
    warned = [r.getMessage() for r in caplog.records if "without checkpoints" in r.getMessage()]
    assert len(warned) == 1 and "source(s) in " in warned[0] and "runtime.checkpoint.path" in warned[0]
