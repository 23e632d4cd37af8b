"""The ``mqtt`` sink: publish records (alerts, results) as JSON to a topic filled from their tags.

``topic_template: alerts/{site}/{device}`` sends a record tagged ``site=plant1, device=pump7`` to
``alerts/plant1/pump7``. The payload is the record as JSON (``ts``, ``tags``, ``fields`` and annotations;
a frame is replaced by its shape). While the broker is unreachable, records wait in a bounded queue
(``offline_queue``; when full the oldest are dropped and counted as ``dropped_offline``) and are sent in order
after the reconnect. QoS 1/2 messages in flight when the connection broke are re-sent by paho.
A record without a tag the template needs is dead-lettered with the tag's name.

>>> MqttSinkConfig.model_validate({"id": "out", "type": "mqtt", "inputs": ["alerts"], "node": "gw1",
...     "topic_template": "alerts/{site}/{device}"}).qos
1
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from connectors.mqtt.connection import Connection
from connectors.mqtt.settings import MqttConnectionFields, default_client_id
from connectors.mqtt.topics import TopicTemplate
from pipeline.batch import Batch
from pipeline.config import SinkConfig
from pipeline.stage import Context, Sink

log = logging.getLogger("edgesieve.mqtt")


class MqttSinkConfig(SinkConfig, MqttConnectionFields):
    type: Literal["mqtt"]
    topic_template: str = Field(description="Publish topic, named levels filled from tags: alerts/{site}/{device}.")
    qos: int = Field(1, ge=0, le=2, description="Publish QoS.")
    retain: bool = Field(False, description="Publish retained (the broker keeps the last message per topic).")
    offline_queue: int = Field(10_000, ge=0, le=10_000_000,
                               description="Records kept while disconnected; beyond that the oldest are dropped (counted).")
    status: bool = Field(False, description="Publish retained online/offline on edgesieve/{node}/{pipeline}/status (usually the source does).")
    max_inflight: int = Field(20, ge=1, le=65_535,
                              description="QoS>=1 publishes awaiting the broker's ack; keep <= the broker's receive maximum (mosquitto: 20).")
    flush_timeout: float = Field(5.0, ge=0, le=600, description="Seconds flush/close wait for queued records to reach the broker.")

    @field_validator("topic_template")
    @classmethod
    def _template(cls, v: str) -> str:
        TopicTemplate(v)                           # raises for a malformed template
        if {"+", "#"} & set(v.split("/")):
            raise ValueError(f"topic_template {v!r}: a publish topic cannot contain + or #")
        return v


def _json_default(o):
    if isinstance(o, np.ndarray):
        return {"shape": list(o.shape), "dtype": str(o.dtype)}
    if isinstance(o, (np.floating, np.integer, np.bool_)):
        return o.item()
    return str(o)


class MqttSink(Sink):
    """Publish records to MQTT (see the module docstring)."""

    Config = MqttSinkConfig
    EXAMPLE = {"url": "mqtt://localhost:1883", "topic_template": "alerts/{site}/{device}", "qos": 1}

    def __init__(self, config: MqttSinkConfig, ctx: Context):
        super().__init__(config, ctx)
        self.where = f"sink {config.id!r}"
        self.template = TopicTemplate(config.topic_template)
        self._queue: deque[tuple[str, bytes]] = deque()
        self._lock = threading.Lock()
        client_id = config.client_id or default_client_id(config.node_name, ctx.pipeline, config.id, ctx.state_dir)
        self.conn = Connection(config, where=self.where, pipeline=ctx.pipeline, client_id=client_id,
                               status=config.status, max_inflight=config.max_inflight, on_connect=self._flush_queue)
        self._last = None                       # MQTTMessageInfo of the latest publish (flush waits for it)
        self.conn.start()
        self.conn.wait_connected(min(config.flush_timeout, 5.0))

    def _publish(self, topic: str, payload: bytes) -> None:
        self._last = self.conn.client.publish(topic, payload, qos=self.config.qos, retain=self.config.retain)

    def _flush_queue(self, client, session_present: bool) -> None:   # network thread, on every connect
        with self._lock:
            while self._queue:
                self._publish(*self._queue.popleft())

    def write(self, batch: Batch) -> None:
        if self.conn.error:
            raise ConnectionError(self.conn.error)
        records = batch.to_records()
        out, bad, reasons = [], [], []
        for i, rec in enumerate(records):
            try:
                topic = self.template.format(rec.get("tags", {}))
            except (KeyError, ValueError) as e:
                bad.append(i)
                reasons.append(f"{self.where}: {e.args[0]}")
                continue
            out.append((topic, json.dumps(rec, default=_json_default).encode()))
        if bad:
            self.ctx.dead_letter(batch.take(np.array(bad)), reasons)
        with self._lock:
            if self.conn.connected.is_set() and not self._queue:
                for topic, payload in out:
                    self._publish(topic, payload)
                return
            q, limit = self._queue, self.config.offline_queue
            q.extend(out)
            over = len(q) - limit
            for _ in range(max(0, over)):
                q.popleft()
            self.ctx.count("queued_offline", len(out))
            if over > 0:
                self.ctx.count("dropped_offline", over)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def flush(self) -> None:
        """While connected, wait (up to flush_timeout) until what was written reached the broker.

        While disconnected, return at once: the records stay queued (a checkpoint must not stall on an outage).
        """
        self._drain(wait_for_connection=False)

    def _drain(self, wait_for_connection: bool) -> None:
        deadline = time.monotonic() + self.config.flush_timeout
        while self._queue and time.monotonic() < deadline and not self.conn.error:
            if not wait_for_connection and not self.conn.connected.is_set():
                return
            time.sleep(0.01)
        last = self._last
        if last is not None and self.conn.connected.is_set():
            try:
                last.wait_for_publish(max(0.0, deadline - time.monotonic()))
            except (RuntimeError, ValueError):
                pass                             # disconnected meanwhile: paho re-sends after the reconnect

    def gauges(self) -> dict[str, float]:
        return {"connected": 1.0 if self.conn.connected.is_set() else 0.0}

    def close(self) -> None:
        self._drain(wait_for_connection=True)    # give a reconnect up to flush_timeout to send the queue
        if self._queue:
            log.warning("%s: closing with %d record(s) still queued (broker unreachable): they are lost",
                        self.where, len(self._queue))
            self.ctx.count("dropped_offline", len(self._queue))
        self.conn.close()

