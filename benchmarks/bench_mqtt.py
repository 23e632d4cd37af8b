"""MQTT ingest benchmark: how fast each consumer drains the same backlog from one local Mosquitto.

    python benchmarks/bench_mqtt.py [--messages 40000] [--batch-messages 4000] [--repeat 2]

Consumers, all in this run, against the same broker:
  (a) paho   a bare paho-mqtt 2 subscriber with an empty callback (paho's own receive loop: the baseline)
  (b) pipe   the `mqtt` source -> 10 s `window` (per site/device) -> `file` sink, through the real runtime
  (c) c-sub  `mosquitto_sub` (the C client) writing to /dev/null: the ceiling of this machine
  (d) jrnl   QoS >= 1 only: (b) with checkpoints on (interval 30 s), so every message goes through the input
             journal (`journal_fsync: full`, fsync before each acknowledgement) and is acknowledged at once
  (e) jrnl-n (d) with `journal_fsync: normal` (written to the OS before the acknowledgement, no fsync)
Scenarios: single-reading `json` at QoS 0 and QoS 1, and `json-batch` (100 readings per message) at QoS 1.

Method: each consumer first creates a persistent session (clean start off) and disconnects; a publisher in a
separate process then publishes the messages (QoS 0 messages are queued for offline sessions:
queue_qos0_messages); then each consumer in turn connects and drains its backlog, timed from connect to the last
message. So the publisher's speed does not limit the figures, and every consumer sees the same broker work.
Each scenario runs --repeat rounds and keeps each consumer's best time (other load on a shared machine only
slows a run down). Loss check: every consumer must receive every message, else the run fails.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402

from tests.support.mosquitto import Mosquitto  # noqa: E402

PUBLISHER = r"""
import json, sys, time
import paho.mqtt.client as mqtt
host, port, qos, n, per_msg = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-pub", protocol=mqtt.MQTTv5)
c.max_inflight_messages_set(1000)
c.max_queued_messages_set(0)
c.connect(host, port)
c.loop_start()
t0 = 1_700_000_000.0
last = None
for i in range(n):
    dev = i % 50
    if per_msg == 1:
        body = {"ts": t0 + i * 0.01, "temperature": 20.0 + (i % 97) * 0.1, "pressure": 1.0 + (i % 13) * 0.01, "vibration": (i % 7) * 0.3}
    else:
        base = t0 + i * per_msg * 0.01
        body = [{"ts": base + k * 0.01, "temperature": 20.0 + k * 0.1, "pressure": 1.0 + k * 0.01, "vibration": k * 0.3}
                for k in range(per_msg)]
    last = c.publish(f"bench/plant{dev % 2}/dev{dev}", json.dumps(body), qos=qos)
    if qos and i % 5000 == 4999:
        last.wait_for_publish(60)
if last is not None and qos:
    last.wait_for_publish(60)
time.sleep(0.5)   # QoS 0: let the socket drain before disconnecting
c.disconnect()
c.loop_stop()
"""


def _session(broker: Mosquitto, client_id: str, qos: int) -> None:
    """Create a persistent session subscribed to bench/#, then disconnect."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    done = threading.Event()
    c.on_subscribe = lambda *a: done.set()
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    c.connect(broker.host, broker.port, clean_start=False, properties=props)
    c.loop_start()
    c.subscribe("bench/#", qos)
    assert done.wait(10), "no SUBACK"
    c.disconnect()
    c.loop_stop()


def drain_paho(broker: Mosquitto, n: int) -> float:
    count = [0]
    done = threading.Event()

    def on_message(client, userdata, msg):
        count[0] += 1
        if count[0] >= n:
            done.set()

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-a", protocol=mqtt.MQTTv5)
    c.on_message = on_message
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    t0, cpu0 = time.perf_counter(), time.process_time()
    c.connect(broker.host, broker.port, clean_start=False, properties=props)
    c.loop_start()
    ok = done.wait(120)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    c.disconnect()
    c.loop_stop()
    if not ok:
        raise RuntimeError(f"paho received {count[0]} of {n}")
    return seconds, cpu


def drain_pipeline(broker: Mosquitto, n_messages: int, readings: int, qos: int, codec: str, work: Path,
                   client_id: str = "bench-b", fsync: str | None = None) -> float:
    """The real runtime; ``fsync`` set: checkpoints on (30 s), so the input journal is used with that policy."""
    from pipeline.loader import parse_pipeline
    from pipeline.runtime import Pipeline

    text = f"""
pipeline: bench
sources:
  - id: in
    type: mqtt
    url: {broker.url}
    client_id: {client_id}
    node: bench
    journal_fsync: {fsync or "full"}
    subscriptions: [{{topic: "bench/#", topic_template: "bench/{{site}}/{{device}}", qos: {qos}, codec: {codec}}}]
stages:
  - {{id: agg, type: window, inputs: [in], size: 10s, key: [site, device], aggregates: {{temperature: [mean, max], vibration: [max]}}}}
sinks:
  - {{id: out, type: file, inputs: [agg], path: {work / 'out.ndjson'}, truncate: true}}
runtime:
  dead_letter: null
  state_dir: {work / client_id}
  {f"checkpoint: {{path: {work / client_id / 'cp'}, interval: 30s}}" if fsync else ""}
"""
    p = Pipeline(parse_pipeline(text, env={}))
    t0, cpu0 = time.perf_counter(), time.process_time()
    th = threading.Thread(target=p.run, daemon=True)
    th.start()
    deadline = time.monotonic() + 120
    while p.metrics.get("agg", "in") < readings and time.monotonic() < deadline and th.is_alive():
        time.sleep(0.02)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    got = p.metrics.get("agg", "in")
    p.stop()
    th.join(30)
    if got < readings:
        raise RuntimeError(f"pipeline received {got} of {readings} readings ({p.metrics.by_item()})")
    return seconds, cpu


def drain_mosquitto_sub(broker: Mosquitto, n: int, qos: int) -> float:
    exe = shutil.which("mosquitto_sub")
    if exe is None:
        return float("nan"), float("nan")
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run([exe, "-h", "127.0.0.1", "-p", str(broker.port), "-V", "mqttv5", "-i", "bench-c", "-c",
                        "-x", "3600", "-q", str(qos), "-t", "bench/#", "-C", str(n)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)
    seconds = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise RuntimeError(f"mosquitto_sub failed: {r.stderr.decode()[:300]}")
    return seconds, (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)


def scenario(name: str, qos: int, codec: str, n: int, per_msg: int, tmp: Path, repeat: int) -> dict:
    """Best of ``repeat`` rounds (publish a backlog, drain it with each consumer): other load on the machine only slows."""
    best: dict[str, float] = {}
    for rnd in range(repeat):
        with Mosquitto(tmp / f"{name}-{rnd}", persistence=False,
                       extra_config=["queue_qos0_messages true", "max_queued_messages 0", "max_queued_bytes 0"]) as broker:
            consumers = ("bench-a", "bench-b", "bench-c") + (("bench-d", "bench-e") if qos else ())
            for cid in consumers:
                _session(broker, cid, qos)
            subprocess.run([sys.executable, "-c", PUBLISHER, "127.0.0.1", str(broker.port), str(qos), str(n), str(per_msg)],
                           check=True, timeout=300)
            for key, (seconds, cpu) in (("a", drain_paho(broker, n)),
                                        ("b", drain_pipeline(broker, n, n * per_msg, qos, codec, tmp / f"{name}-{rnd}")),
                                        ("c", drain_mosquitto_sub(broker, n, qos)),
                                        *((("d", drain_pipeline(broker, n, n * per_msg, qos, codec, tmp / f"{name}-{rnd}",
                                                                "bench-d", "full")),
                                           ("e", drain_pipeline(broker, n, n * per_msg, qos, codec, tmp / f"{name}-{rnd}",
                                                                "bench-e", "normal"))) if qos else ())):
                best[f"{key}_s"] = min(best.get(f"{key}_s", float("inf")), seconds)
                best[f"{key}_cpu_s"] = min(best.get(f"{key}_cpu_s", float("inf")), cpu)
    return {"scenario": name, "qos": qos, "codec": codec, "messages": n, "readings": n * per_msg, **best}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=40_000, help="single-reading messages per json scenario")
    ap.add_argument("--batch-messages", type=int, default=4_000, help="json-batch messages (100 readings each)")
    ap.add_argument("--repeat", type=int, default=2, help="rounds per scenario; the best time of each consumer counts")
    ap.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rows = [scenario("json-qos0", 0, "json", args.messages, 1, tmp, args.repeat),
                scenario("json-qos1", 1, "json", args.messages, 1, tmp, args.repeat),
                scenario("json-batch-qos1", 1, "json-batch", args.batch_messages, 100, tmp, args.repeat)]
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end of the run")
    head = f"{'scenario':<16} {'consumer':<7} {'msg/s':>10} {'readings/s':>12} {'CPU us/msg':>11}"
    print(head)
    print("-" * len(head))
    for r in rows:
        for key, label in (("a", "paho"), ("b", "pipe"), ("c", "c-sub"), ("d", "jrnl"), ("e", "jrnl-n")):
            if f"{key}_s" not in r:
                continue
            s, cpu = r[f"{key}_s"], r[f"{key}_cpu_s"]
            print(f"{r['scenario']:<16} {label:<7} {r['messages'] / s:>10,.0f} {r['readings'] / s:>12,.0f} "
                  f"{cpu / r['messages'] * 1e6:>11,.1f}")
        r["b_over_a"], r["b_over_c"] = r["a_s"] / r["b_s"], r["c_s"] / r["b_s"]
        r["b_over_a_cpu"] = r["a_cpu_s"] / r["b_cpu_s"]
        print(f"{'':<16} (b)/(a) = {r['b_over_a']:.2f} by wall time, {r['b_over_a_cpu']:.2f} by CPU time;"
              f"   (b)/(c) = {r['b_over_c']:.2f};   zero loss: yes")
        if "d_s" in r:
            r["d_over_b"], r["e_over_b"], r["d_over_a"] = r["b_s"] / r["d_s"], r["b_s"] / r["e_s"], r["a_s"] / r["d_s"]
            print(f"{'':<16} journal: (d)/(b) = {r['d_over_b']:.2f}, (e)/(b) = {r['e_over_b']:.2f}, "
                  f"(d)/(a) = {r['d_over_a']:.2f} by wall time")
    if args.json:
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
