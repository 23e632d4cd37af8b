"""Per-device event time through the CLI with a real Mosquitto: devices flushing backlogs one after another,
and a reading stamped a year ahead (also across a restart from the checkpoint). Every device's every window is
compared with an independent computation from what was published; /metrics and the log say what happened."""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.support.cli import start_edgesieve
from tests.support.clients import Client, read_ndjson
from tests.support.mosquitto import free_port
from tests.support.windows import check, reference

AGGS = ["count", "sum", "min", "max", "last"]


def pipeline_file(tmp_path: Path, broker, prefix: str, node: str, lateness: str) -> Path:
    # QoS 0 to the pipeline: readings are published only while it runs, and this test is about event time, not
    # about redelivery of QoS 1 messages after a restart (acknowledged at checkpoints; tested with the journal)
    doc = {
        "pipeline": "event-time",
        "sources": [{"id": "devices", "type": "mqtt", "url": broker.url, "node": node, "emit_interval": 0.01,
                     "subscriptions": [{"topic": f"{prefix}/+/readings", "topic_template": f"{prefix}/{{device}}/readings",
                                        "codec": "json-batch", "qos": 0}]}],
        "stages": [{"id": "per_device", "type": "window", "inputs": ["devices"], "size": "10s", "key": ["device"],
                    "allowed_lateness": lateness, "late": "dead_letter", "aggregates": {"t": AGGS}}],
        "sinks": [{"id": "out", "type": "file", "inputs": ["per_device"], "path": str(tmp_path / "windows.ndjson")}],
        "runtime": {"batching": {"max_wait": 0.02}, "tick": 0.05, "dead_letter": str(tmp_path / "dead.ndjson"),
                    "checkpoint": {"path": str(tmp_path / "state" / "checkpoint"), "interval": "1s"}},
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def scrape(port: int) -> dict[str, float]:
    """The window stage's counters as /metrics shows them."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for m in re.finditer(r'^edgesieve_records_total\{(.*?)\} (\S+)$', text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if labels["item"] == "per_device":
            out[labels["event"]] = float(m.group(2))
    return out


class Run:
    """``edgesieve run`` on the pipeline file, started and waited for until its source is subscribed."""

    def __init__(self, path: Path, broker, node: str):
        self.port = free_port()
        status = Client(broker).subscribe(f"edgesieve/{node}/+/status")
        self.proc = start_edgesieve("run", str(path), "--metrics-port", str(self.port), cwd=path.parent)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.communicate()[1].decode()[-3000:]
            if any(json.loads(m.payload).get("status") == "online" for m in status.messages):
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"no online status from node {node!r} within 30 s")
        status.close()
        self.base = scrape(self.port)        # counters resume from the checkpoint: count from here

    def wait_in(self, n: int, timeout: float = 60) -> dict[str, float]:
        """Wait until the window stage took ``n`` more readings; the counters' changes since the start."""
        deadline = time.monotonic() + timeout
        counters = {}
        while time.monotonic() < deadline:
            now = scrape(self.port)
            counters = {k: v - self.base.get(k, 0) for k, v in now.items() if v - self.base.get(k, 0)}
            if counters.get("in", 0) >= n:  # the stage counts `in` before its verdicts: scrape once more after
                time.sleep(0.3)              # they are counted (one batch of everything made this flaky)
                now = scrape(self.port)
                return {k: v - self.base.get(k, 0) for k, v in now.items() if v - self.base.get(k, 0)}
            time.sleep(0.1)
        raise AssertionError(f"the window stage saw {counters.get('in', 0)} of {n} readings")

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, err.decode()[-3000:]
        return err.decode()


def publish(broker, prefix: str, records: list[dict], per_message: int = 10) -> None:
    """Each device's readings in the given order, ``per_message`` to a JSON array, QoS 1, all acknowledged."""
    pub = Client(broker)
    infos = []
    for i in range(0, len(records), per_message):
        chunk = records[i:i + per_message]
        assert len({r["tags"]["device"] for r in chunk}) == 1
        payload = [{"ts": r["ts"], "t": r["fields"]["t"]} for r in chunk]
        infos.append(pub.publish(f"{prefix}/{chunk[0]['tags']['device']}/readings", payload, wait=False))
    for info in infos:
        info.wait_for_publish(10)
    pub.close()


def backlog(device: str, t0: float, seconds: float, hz: float, rng) -> list[dict]:
    ts = t0 + np.arange(int(seconds * hz)) / hz
    return [{"ts": round(float(t), 3), "tags": {"device": device}, "fields": {"t": round(float(v), 4)}}
            for t, v in zip(ts, rng.normal(20, 3, len(ts)))]


@pytest.mark.slow
def test_twenty_devices_flushing_backlogs_one_after_another_lose_nothing(mqtt_broker, prefix, tmp_path):
    rng = np.random.default_rng(1)
    now = time.time()
    node = f"gw-{uuid.uuid4().hex[:6]}"
    run = Run(pipeline_file(tmp_path, mqtt_broker, prefix, node, "2s"), mqtt_broker, node)
    # every device was offline for the same 25 s and flushes its buffer after the previous device's flush
    records = [r for d in range(20) for r in backlog(f"dev{d:02}", now - 30, 25, 10, rng)]
    publish(mqtt_broker, prefix, records)
    counters = run.wait_in(len(records))
    log = run.stop()
    assert counters.get("late", 0) == 0 and counters.get("future_timestamp", 0) == 0, counters
    assert not (tmp_path / "dead.ndjson").exists() or not read_ndjson(tmp_path / "dead.ndjson")
    check(read_ndjson(tmp_path / "windows.ndjson"), reference(records, 10.0, 10.0, ["t"], AGGS))
    assert "late readings of" not in log


@pytest.mark.slow
def test_a_reading_a_year_ahead_is_dead_lettered_and_survives_no_restart(mqtt_broker, prefix, tmp_path):
    rng = np.random.default_rng(2)
    now = time.time()
    node = f"gw-{uuid.uuid4().hex[:6]}"
    path = pipeline_file(tmp_path, mqtt_broker, prefix, node, "120s")
    devices = [f"dev{d}" for d in range(10)]
    first = [r for d in devices for r in backlog(d, now - 200, 100, 2, rng)]        # 2,000 readings
    poisoned = {"ts": round(now + 365 * 86400, 3), "tags": {"device": "dev3"}, "fields": {"t": 99.0}}
    run = Run(path, mqtt_broker, node)
    publish(mqtt_broker, prefix, [poisoned], per_message=1)
    publish(mqtt_broker, prefix, first)
    counters = run.wait_in(len(first) + 1)
    log = run.stop()
    assert counters.get("future_timestamp") == 1 and counters.get("late", 0) == 0, counters
    lines = [line for line in log.splitlines() if "stamped in the future" in line]
    assert len(lines) == 1 and "device=dev3" in lines[0], log[-3000:]
    dead = read_ndjson(tmp_path / "dead.ndjson")
    assert len(dead) == 1 and dead[0]["record"]["ts"] == poisoned["ts"] and "future_timestamp" in dead[0]["reason"]

    # restart from the checkpoint: the far-future reading never entered dev3's clock, so nothing is late now
    second = [r for d in devices for r in backlog(d, now - 100, 60, 2, rng)]
    run = Run(path, mqtt_broker, node)
    publish(mqtt_broker, prefix, second)
    counters = run.wait_in(len(second))
    run.stop()
    assert counters.get("late", 0) == 0 and counters.get("future_timestamp", 0) == 0, counters
    check(read_ndjson(tmp_path / "windows.ndjson"), reference(first + second, 10.0, 10.0, ["t"], AGGS, lateness=120.0))
