"""``edgesieve simulate``: deterministic payloads in every codec, anomaly injection, and publishing to a real broker."""

from __future__ import annotations

import io
import json
import threading
import time

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from connectors.simulate import DeviceGroup, Simulator
from connectors.simulate.data import SKAB_FIELDS, GeneratedReadings, ShapeFrames, SkabReadings, skab_files
from connectors.simulate.simulator import DEFAULT_SKAB, print_publisher
from tests.support.cli import edgesieve, start_edgesieve

START = 1767225600.0


class Subscriber:
    """Collects (topic, payload, user properties) from a real broker."""

    def __init__(self, url: str, topic: str):
        host, port = url.split("://")[1].split(":")
        self.messages: list[tuple[str, bytes, dict]] = []
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.c.on_subscribe = lambda *a: self.ready.set()
        self.c.on_message = self._on_message
        self.c.connect(host, int(port))
        self.c.loop_start()
        assert self.ready.wait(10), "subscription not acknowledged"

    def _on_message(self, c, u, msg):
        props = dict(getattr(msg.properties, "UserProperty", []) or [])
        with self.lock:
            self.messages.append((msg.topic, msg.payload, props))

    def wait_for(self, n: int, timeout: float = 20) -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.messages) < n:
            time.sleep(0.05)
        return list(self.messages)

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def payloads(group: DeviceGroup, seed: int, n: int) -> list[tuple[str, bytes]]:
    sim = Simulator([group], seed=seed, start_ts=START)
    out = []
    sim.run(lambda t, p, props: out.append((t, p)) or True, count=n)
    return out


@pytest.mark.parametrize("codec", ["json", "json-batch", "senml"])
def test_same_seed_same_payloads_every_codec(codec):
    def make():
        return DeviceGroup(profile="env", devices=3, codec=codec, rate=0, batch_size=5, source="generator", inject=0.05)
    a, b = payloads(make(), 7, 20), payloads(make(), 7, 20)
    assert a == b and len(a) == 60
    assert payloads(make(), 8, 20) != a
    topics = {t for t, _ in a}
    assert topics == {f"sensors/plant1/room0{i}/env" for i in (1, 2, 3)}


def test_codecs_carry_the_same_readings():
    """json, json-batch and senml encode the same values and event times."""
    def readings(codec):
        g = DeviceGroup(profile="env", devices=1, codec=codec, rate=0, batch_size=4, source="generator", inject=0)
        rows = []
        for _, p in payloads(g, 1, 8 if codec == "json" else 2):
            doc = json.loads(p)
            if codec == "json":
                rows.append(doc)
            elif codec == "json-batch":
                rows += doc["readings"]
            else:
                bt, cur = doc[0]["bt"], {}
                for rec in doc:
                    ts = round(bt + rec.get("t", 0.0), 3)
                    if cur.get("ts") != ts:
                        cur = {"ts": ts}
                        rows.append(cur)
                    cur[rec["n"]] = rec["v"]
        return rows
    j = readings("json")
    assert len(j) == 8 and readings("json-batch") == j
    senml = readings("senml")
    assert [r["ts"] for r in senml] == [r["ts"] for r in j]
    assert [r["co2"] for r in senml] == [r["co2"] for r in j]


def test_decoded_by_the_mqtt_source_codecs():
    codecs = pytest.importorskip("connectors.mqtt.codecs", reason="the mqtt connector is not on this branch yet")
    from connectors.mqtt.rows import RowBuilder

    for codec, n in (("json", 6), ("json-batch", 2), ("senml", 2)):
        g = DeviceGroup(profile="pump", devices=1, codec=codec, rate=0, batch_size=3, source="generator", inject=0,
                        interval=0.5)
        dec, b = codecs.Decoder(codecs.CodecOptions(codec=codec)), RowBuilder()
        for _, p in payloads(g, 2, n):
            dec.decode(p, b, {"device": "pump01"}, arrival=0.0)
        recs = b.build().to_records()
        assert len(recs) == 6, codec
        assert sorted(recs[0]["fields"]) == sorted(SKAB_FIELDS)
        assert [r["ts"] - START for r in recs] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5], codec


def test_injected_anomalies_are_labelled_and_visible():
    clean, lab0 = GeneratedReadings("pump", seed=5, device=0, inject=0).next_block(20_000)
    dirty, lab1 = GeneratedReadings("pump", seed=5, device=0, inject=0.002).next_block(20_000)
    assert lab0.sum() == 0 and 0.02 < lab1.mean() < 0.3
    assert all((clean[k] == dirty[k])[lab1 == 0].all() for k in clean)   # outside episodes nothing changed
    sd = {k: clean[k].std() for k in clean}
    dev = np.max([np.abs(dirty[k] - clean[k]) / sd[k] for k in clean], axis=0)
    assert np.median(dev[lab1 == 1]) > 1.0


def test_injection_can_start_late_and_leaves_the_rest_alone():
    blocks = [37, 100, 200, 163]
    def labels(after):
        g = GeneratedReadings("pump", seed=3, device=1, inject=0.02, inject_after=after)
        return np.concatenate([g.next_block(n)[1] for n in blocks])
    plain, late = labels(0), labels(250)
    assert plain[:250].any() and not late[:250].any() and late[250:].any()
    g = GeneratedReadings("pump", seed=3, device=1, inject=0.02)       # the default: as before
    assert np.array_equal(np.concatenate([g.next_block(n)[1] for n in blocks]), plain)


def test_shapes_move_and_rest():
    s = ShapeFrames(seed=0, device=0, size=(96, 72))
    frames, counts = zip(*(s.next_frame() for _ in range(600)))
    assert max(counts) >= 1 and min(counts) == 0
    diffs = [np.mean(np.abs(a.astype(int) - b) > 10) for a, b in zip(frames, frames[1:])]
    assert min(diffs) == 0.0 and max(diffs) > 0.005   # still scenes and moving ones


def test_skab_replay_uses_the_real_files():
    if not skab_files(DEFAULT_SKAB):
        pytest.skip(f"SKAB data not found at {DEFAULT_SKAB} (see ../shared/data/README.md)")
    s = SkabReadings(DEFAULT_SKAB, seed=0, device=1)
    fields, labels = s.next_block(1500)
    import pandas as pd

    df = pd.read_csv(skab_files(DEFAULT_SKAB)[1], sep=";")
    n = min(len(df), 1500)
    assert np.array_equal(fields["Current"][:n], df["Current"].to_numpy()[:n])
    assert labels[:n].sum() == df["anomaly"].to_numpy()[:n].sum() > 0


def test_cli_print_is_deterministic_and_rejects_bad_options():
    args = ("simulate", "--print", "--rate", "0", "--count", "3", "--seed", "4", "--start", str(START),
            "--profile", "env", "--codec", "json-batch", "--batch-size", "2", "--quiet")
    a, b = edgesieve(*args), edgesieve(*args)
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout and a.stdout.count("\n") == 9
    assert '"messages": 9' in a.stderr
    bad = edgesieve("simulate", "--print", "--profile", "pump", "--codec", "frame")
    assert bad.returncode == 2 and "does not fit profile" in bad.stderr
    nobroker = edgesieve("simulate", "--url", "mqtt://127.0.0.1:9", "--count", "1")
    assert nobroker.returncode == 1 and "cannot connect to the MQTT broker at mqtt://127.0.0.1:9" in nobroker.stderr


def test_publishes_readings_and_frames_to_a_real_broker(mqtt_broker, prefix):
    sub = Subscriber(mqtt_broker.url, f"{prefix}/#")
    try:
        r = edgesieve("simulate", "--url", mqtt_broker.url, "--topic", prefix + "/{site}/{device}/{kind}",
                      "--devices", "2", "--rate", "50", "--count", "5", "--profile", "env", "--quiet")
        assert r.returncode == 0, r.stderr
        r = edgesieve("simulate", "--url", mqtt_broker.url, "--topic", prefix + "/{site}/{device}/{kind}",
                      "--devices", "1", "--rate", "20", "--count", "3", "--profile", "camera", "--source", "shapes",
                      "--frame-size", "64x48", "--quiet")
        assert r.returncode == 0, r.stderr
        msgs = sub.wait_for(13)
    finally:
        sub.close()
    assert len(msgs) == 13
    env = [m for m in msgs if m[0].endswith("/env")]
    assert {t for t, _, _ in env} == {f"{prefix}/plant1/room01/env", f"{prefix}/plant1/room02/env"}
    assert all(set(json.loads(p)) == {"ts", "temperature", "humidity", "co2"} for _, p, _ in env)
    frames = [m for m in msgs if m[0].endswith("/camera")]
    assert len(frames) == 3
    for _, payload, props in frames:
        assert np.load(io.BytesIO(payload)).shape == (48, 64)
        assert float(props["ts"]) > 1e9


def test_runs_for_a_duration_at_the_given_rate(mqtt_broker, prefix):
    sub = Subscriber(mqtt_broker.url, f"{prefix}/#")
    try:
        p = start_edgesieve("simulate", "--url", mqtt_broker.url, "--topic", prefix + "/{device}", "--devices", "3",
                            "--rate", "20", "--for", "1.5", "--source", "generator", "--quiet")
        out, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
        msgs = sub.wait_for(10**6, timeout=1.0)
    finally:
        sub.close()
    assert 3 * 20 * 1.2 <= len(msgs) <= 3 * 20 * 1.5 + 3


def test_print_publisher_shows_frames_by_size():
    buf = io.StringIO()
    g = DeviceGroup(profile="camera", devices=1, rate=0, source="shapes", frame_size=(32, 24))
    Simulator([g], seed=0, start_ts=START).run(print_publisher(buf), count=1)
    assert buf.getvalue().startswith("sensors/plant1/cam01/camera <frame .npy")


def test_keeps_publishing_across_a_broker_restart(tmp_path, prefix):
    mosq = pytest.importorskip("tests.support.mosquitto", reason="tests/support/mosquitto.py (mqtt branch) is not here yet")
    if not mosq.available():
        pytest.skip("mosquitto is not installed")
    with mosq.Mosquitto(tmp_path / "broker") as broker:
        p = start_edgesieve("simulate", "--url", broker.url, "--topic", prefix + "/{device}", "--devices", "2",
                            "--rate", "20", "--for", "4", "--qos", "1", "--source", "generator")
        time.sleep(1.5)
        broker.restart()
        out, err = p.communicate(timeout=30)
    text = err.decode()
    assert p.returncode == 0, text[-2000:]
    assert "reconnecting" in text
    summary = json.loads(text.rsplit("simulate: ", 1)[1])
    assert summary["messages"] >= 2 * 20 * 3      # it went on publishing after the restart


def test_tls_and_password_file(tmp_path, prefix):
    mosq = pytest.importorskip("tests.support.mosquitto", reason="tests/support/mosquitto.py is not here")
    pytest.importorskip("cryptography", reason="the test generates its certificates with cryptography")
    if not mosq.available():
        pytest.skip("mosquitto is not installed")
    tls = mosq.make_tls_files(tmp_path / "pki")
    (tmp_path / "pw").write_text("s3cret-pw\n")
    with mosq.Mosquitto(tmp_path / "broker", users={"dev": "s3cret-pw"}, tls=tls) as broker:
        base = ("simulate", "--url", broker.url, "--topic", prefix + "/{device}", "--count", "3", "--rate", "0",
                "--username", "dev", "--quiet")
        ok = edgesieve(*base, "--password-file", str(tmp_path / "pw"), "--ca-file", str(tls.ca))
        assert ok.returncode == 0, ok.stderr
        assert '"messages": 9' in ok.stderr and "s3cret" not in ok.stderr
        untrusted = edgesieve(*base, "--password-file", str(tmp_path / "pw"))        # system CAs only
        assert untrusted.returncode == 1 and "cannot connect" in untrusted.stderr
        (tmp_path / "bad").write_text("nope\n")
        refused = edgesieve(*base, "--password-file", str(tmp_path / "bad"), "--ca-file", str(tls.ca))
        assert refused.returncode == 1 and "refused" in refused.stderr and "nope" not in refused.stderr


def test_a_replay_faster_than_the_clock_ends_about_now_instead_of_starting_now():
    from connectors.simulate.cli import _start, parser
    from connectors.simulate.simulator import DeviceGroup

    def start(*argv):
        args = parser().parse_args(list(argv))
        return _start(args, DeviceGroup(profile="pump", devices=1, rate=args.rate, interval=args.interval,
                                        source="generator"))

    now = time.time()
    begin = start("--rate", "50", "--interval", "1", "--count", "500")     # 500 s of readings in 10 s
    assert begin == pytest.approx(now - 500 * (1 - 1 / 50), abs=5)         # the last reading is stamped about now
    assert start("--rate", "50", "--interval", "1", "--count", "5", "--start", "123") == 123
    assert start("--rate", "1", "--count", "5") is None                    # real time: starts now
