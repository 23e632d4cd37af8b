"""Test helpers for MQTT connectors: a paho test client and a pipeline running on a thread."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


class Client:
    """A paho test client (MQTT 5) on its own loop thread: publish, and collect what a subscription receives."""

    def __init__(self, broker, client_id: str | None = None, persistent: bool = False, **tls):
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or "", protocol=mqtt.MQTTv5)
        self.messages: list[mqtt.MQTTMessage] = []
        self._cond = threading.Condition()
        self._subs: list[tuple[str, int]] = []
        self.c.on_message = self._on_message
        self.c.on_connect = lambda c, u, f, rc, p: self._subs and c.subscribe(self._subs)
        self.c.reconnect_delay_set(0.05, 0.5)
        if tls.get("ca"):
            self.c.tls_set(ca_certs=str(tls["ca"]))
        if tls.get("user"):
            self.c.username_pw_set(tls["user"], tls["password"])
        props = Properties(PacketTypes.CONNECT)
        if persistent:
            props.SessionExpiryInterval = 600
        self.c.connect(broker.host, broker.port, clean_start=not persistent, properties=props)
        self.c.loop_start()

    def _on_message(self, c, u, msg):
        with self._cond:
            self.messages.append(msg)
            self._cond.notify_all()

    def subscribe(self, topic: str, qos: int = 1) -> "Client":
        self._subs.append((topic, qos))
        done = threading.Event()
        self.c.on_subscribe = lambda *a: done.set()
        self.c.subscribe(topic, qos)
        assert done.wait(5), f"no SUBACK for {topic}"
        return self

    def publish(self, topic: str, payload, qos: int = 1, retain: bool = False, properties=None, wait: bool = True):
        if isinstance(payload, (dict, list)):
            payload = json.dumps(payload)
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        if wait and qos:
            info.wait_for_publish(5)
        return info

    def wait_for(self, n: int, timeout: float = 10.0) -> list[mqtt.MQTTMessage]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.messages) < n and time.monotonic() < deadline:
                self._cond.wait(0.05)
            return list(self.messages)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


class RunningPipeline:
    """A pipeline from YAML text running on a thread; ``stop()`` returns its RunSummary."""

    def __init__(self, text: str, env: dict | None = None):
        from pipeline.loader import parse_pipeline
        from pipeline.runtime import Pipeline

        self.pipeline = Pipeline(parse_pipeline(text, env=env or {}))
        self.summary = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        self.summary = self.pipeline.run()

    def counter(self, item: str, name: str) -> int:
        return self.pipeline.metrics.get(item, name)

    def wait_counter(self, item: str, name: str, n: int, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while self.counter(item, name) < n and time.monotonic() < deadline and self.thread.is_alive():
            time.sleep(0.02)
        return self.counter(item, name)

    def wait(self, timeout: float = 20.0):
        """Wait for the pipeline to end by itself (end of sources, or an error); return its RunSummary."""
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "pipeline did not end"
        return self.summary

    def stop(self, timeout: float = 20.0):
        self.pipeline.stop()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "pipeline did not stop"
        return self.summary


def read_ndjson(path: Path) -> list[dict]:
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def windows_written(path) -> dict:
    """(device, window start) -> (count, v_sum) of the windows a file sink wrote; a window written twice fails."""
    out: dict = {}
    for r in read_ndjson(path):
        key = (r["tags"]["device"], r["ts"])
        assert key not in out, f"window {key} written twice"
        out[key] = (r["fields"]["count"], r["fields"]["v_sum"])
    return out
