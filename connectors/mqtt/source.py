"""The ``mqtt`` source: readings from an MQTT broker (paho-mqtt 2, MQTT 5 or 3.1.1).

The network thread only queues each message with its arrival time. Every ``emit_interval`` the source thread
decodes what was queued with each subscription's codec (json, json-batch, senml, frame; see
``connectors/mqtt/codecs.py``; runs of alike json messages are decoded together, ``connectors/mqtt/bulk.py``)
and hands the rows to the pipeline as one batch whose position is the number of messages taken so far. QoS 1/2
messages are acknowledged (paho manual acks) only when the runtime reports that position as processed
(``committed``), so a crash or restart before that makes the broker deliver them again (at-least-once).

A message that cannot be used (undecodable, wrong types, missing fields, NaN/inf, too large, too deep, a topic
that does not fit ``topic_template``) is published to ``edgesieve/{node}/deadletter`` (reason, topic, payload
in base64, truncated), counted as ``dead_lettered.<reason>`` and handed to the pipeline's dead-letter path;
it is acknowledged like any other message and the source goes on.

>>> cfg = MqttSourceConfig.model_validate({"id": "in", "type": "mqtt", "node": "gw1",
...     "subscriptions": [{"topic_template": "sensors/{site}/{device}", "codec": "json", "qos": 1}]})
>>> cfg.subscriptions[0].filter(), cfg.subscriptions[0].qos
('sensors/+/+', 1)
>>> MqttSourceConfig.model_validate({"id": "in", "type": "mqtt", "subscriptions": [{"qos": 1}]})
Traceback (most recent call last):
...
pydantic_core._pydantic_core.ValidationError: 1 validation error for MqttSourceConfig
subscriptions.0
  Value error, a subscription needs a topic or a topic_template [type=value_error, input_value={'qos': 1}, input_type=dict]
...
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections import deque
from typing import Literal

import numpy as np
import paho.mqtt.client as mqtt
from pydantic import Field, model_validator

from connectors.mqtt.bulk import decode_many
from connectors.mqtt.codecs import CodecOptions, Decoder, DecodeError
from connectors.mqtt.connection import Connection
from connectors.mqtt.settings import MqttConnectionFields, default_client_id
from connectors.mqtt.rows import RowBuilder
from connectors.mqtt.topics import TopicTemplate
from pipeline.batch import Batch
from pipeline.config import SourceConfig
from pipeline.stage import Context, Source

log = logging.getLogger("edgesieve.mqtt")
_CHUNK_READINGS = 10_000         # about this many readings per batch handed on while a backlog is decoded
_NOTHING = ([], [], [], None)


class Subscription(CodecOptions):
    """One MQTT subscription and how to decode its messages."""

    topic: str | None = Field(None, description="Topic filter (+ and # wildcards); default: derived from topic_template.")
    topic_template: str | None = Field(
        None, description="Named levels become tags: sensors/{site}/{device} -> site, device. A topic that does not fit is dead-lettered.")
    qos: int = Field(1, ge=0, le=2, description="Subscription QoS: 0 at most once, 1 at least once (recommended), 2.")
    share_group: str | None = Field(
        None, pattern=r"^[^/+#]+$", description="MQTT 5 shared subscription group: instances in one group split the messages.")
    topic_tag: str | None = Field(None, description="Also put the whole topic in this tag.")

    @model_validator(mode="after")
    def _check(self):
        if self.topic is None and self.topic_template is None:
            raise ValueError("a subscription needs a topic or a topic_template")
        if self.topic_template is not None:
            TopicTemplate(self.topic_template)
        if self.topic is not None and self.topic.startswith("$share/"):
            raise ValueError(f"topic {self.topic!r}: use share_group instead of writing $share/ in the topic")
        return self

    def filter(self) -> str:
        return self.topic if self.topic is not None else TopicTemplate(self.topic_template).subscription_filter()

    def subscribe_topic(self) -> str:
        return f"$share/{self.share_group}/{self.filter()}" if self.share_group else self.filter()


class MqttSourceConfig(SourceConfig, MqttConnectionFields):
    type: Literal["mqtt"]
    subscriptions: list[Subscription] = Field(min_length=1, description="Topics to subscribe to, each with its codec.")
    persistent: bool = Field(True, description="Keep the session (subscriptions, unacknowledged QoS>=1 messages) while disconnected.")
    session_expiry: int = Field(86_400, ge=0, le=4_294_967_295, description="MQTT 5: seconds the broker keeps the session after a disconnect.")
    receive_maximum: int = Field(
        2_000, ge=1, le=65_535, description="MQTT 5: most QoS>=1 messages in flight unacknowledged (flow control).")
    max_pending: int = Field(
        200_000, ge=100, le=10_000_000, description="Readings decoded but not yet taken by the pipeline before the network loop pauses.")
    emit_interval: float = Field(0.01, gt=0, le=5, description="Seconds between batches handed to the pipeline.")
    status: bool = Field(True, description="Publish retained online/offline (last will) on edgesieve/{node}/status.")
    deadletter_topic: str | None = Field(
        "edgesieve/{node}/deadletter", description="Where undecodable messages are published; null: only counted and logged.")
    deadletter_max_bytes: int = Field(1024, ge=0, le=1_048_576, description="Payload bytes kept (base64) in a dead-letter message.")

    @model_validator(mode="after")
    def _check(self):
        if self.deadletter_topic is not None:
            try:
                self.deadletter_topic.format(node="n")
            except (KeyError, IndexError, ValueError):
                raise ValueError(f"deadletter_topic {self.deadletter_topic!r}: the only placeholder is {{node}}") from None
        if self.protocol != "5" and any(s.share_group for s in self.subscriptions):
            raise ValueError("share_group needs protocol: 5")
        return self


class _Route:
    __slots__ = ("sub", "filter", "template", "decoder", "props")

    def __init__(self, sub: Subscription):
        self.sub = sub
        self.filter = sub.filter()
        self.template = TopicTemplate(sub.topic_template) if sub.topic_template else None
        self.decoder = Decoder(sub)
        self.props = sub.codec == "frame"         # only frames read MQTT 5 user properties


class MqttSource(Source):
    """Subscribe to an MQTT broker and emit decoded readings (see the module docstring)."""

    Config = MqttSourceConfig
    EXAMPLE = {"url": "mqtt://localhost:1883",
               "subscriptions": [{"topic_template": "sensors/{site}/{device}/{kind}", "qos": 1, "codec": "json"}]}

    def __init__(self, config: MqttSourceConfig, ctx: Context):
        super().__init__(config, ctx)
        self.where = f"source {config.id!r}"
        self._routes = [_Route(s) for s in config.subscriptions]
        self._topics: dict[str, tuple] = {}           # topic -> (route, tags) or (None, reason, detail)
        self._lock = threading.Lock()
        # Messages not decoded yet, as parallel lists of plain values: no object per message that the cyclic
        # garbage collector would have to scan (hundreds wait per emit_interval; that scanning was costly).
        self._arrivals: list[float] = []
        self._topic_in: list[str] = []
        self._payloads: list[bytes] = []
        self._props: list | None = [] if any(r.props for r in self._routes) else None   # MQTT 5 properties
        self._per_message = 100.0                    # readings per message lately (until measured: small chunks)
        self._taken, self._left, self._first_seq = _NOTHING, 0, 1   # taken from the inbox, not decoded yet
        self._builder = RowBuilder()                 # source thread only
        self._seq = 0                                  # messages taken (good and bad)
        self._ack_seq: deque[int] = deque()          # per QoS>=1 message: its seq, and (generation, mid, qos)
        self._ack_id: deque[int] = deque()           # as generation << 18 | mid << 2 | qos (plain ints, see above)
        self._dead: list[tuple[float, str, str, str, str]] = []   # (arrival, topic, reason, detail, payload_b64)
        self.deadletter_topic = (config.deadletter_topic.format(node=config.node_name)
                                 if config.deadletter_topic else None)
        client_id = config.client_id or default_client_id(config.node_name, ctx.pipeline, config.id)
        self.conn = Connection(config, where=self.where, pipeline=ctx.pipeline, client_id=client_id,
                               persistent=config.persistent, session_expiry=config.session_expiry,
                               receive_maximum=config.receive_maximum, manual_ack=True, status=config.status,
                               on_connect=self._subscribe,
                               paused=lambda: (len(self._payloads) + self._left) * self._per_message >= config.max_pending)
        self.conn.client.on_message = self._on_message

    # -- network thread ---------------------------------------------------------------------------
    def _subscribe(self, client: mqtt.Client, session_present: bool) -> None:
        # Always (re)subscribe: harmless when the session kept the subscriptions, essential when it did not.
        topics = [(s.subscribe_topic(), s.qos) for s in self.config.subscriptions]
        client.subscribe(topics)
        log.info("%s: subscribed to %s", self.where, ", ".join(t for t, _ in topics))

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        arrival = time.time()
        topic, payload, qos = msg.topic, msg.payload, msg.qos
        with self._lock:
            self._seq += 1
            if qos:
                self._ack_seq.append(self._seq)
                self._ack_id.append(self.conn.generation << 18 | msg.mid << 2 | qos)
            self._arrivals.append(arrival)
            self._topic_in.append(topic)
            self._payloads.append(payload)
            if self._props is not None:
                self._props.append(msg.properties)

    # -- source thread ----------------------------------------------------------------------------
    def _topic(self, topic: str) -> tuple:
        """(route, tags) for a topic, or (None, reason, detail) when it cannot be used; cached per topic."""
        try:
            return self._topics[topic]
        except KeyError:
            pass
        route = next((r for r in self._routes if mqtt.topic_matches_sub(r.filter, topic)), None)
        if route is None:       # retained message or overlapping filter we did not expect
            found = (None, "topic_mismatch", "topic matches no subscription")
        else:
            tags = route.template.match(topic) if route.template is not None else {}
            if tags is None:
                found = (None, "topic_mismatch", f"topic does not fit topic_template {route.sub.topic_template!r}")
            else:
                found = (route, {**tags, route.sub.topic_tag: topic} if route.sub.topic_tag else tags)
        if len(self._topics) > 10_000:
            self._topics.clear()
        self._topics[topic] = found
        return found

    def _decode(self, arrivals: list, topics: list, payloads: list, props: list | None) -> None:
        """Decode queued messages into the builder, in order; the unusable ones are dead-lettered."""
        route, first, tags = None, 0, []      # messages first..i-1 are of one subscription: decoded together
        for i, topic in enumerate(topics):
            found = self._topic(topic)
            if found[0] is not route:
                self._decode_group(route, first, i, arrivals, topics, payloads, props, tags)
                route, first = found[0], i
            tags.append(found[1])
            if route is None:
                self._reject(arrivals[i], topic, found[1], found[2], payloads[i])
                first = i + 1
        self._decode_group(route, first, len(topics), arrivals, topics, payloads, props, tags)

    def _decode_group(self, route: _Route | None, a: int, z: int, arrivals, topics, payloads, props, tags) -> None:
        if route is None or a >= z:
            return
        user = None
        if route.props:
            user = [dict(p.UserProperty) if p is not None and hasattr(p, "UserProperty") else None for p in props[a:z]]
        decode_many(route.decoder, payloads[a:z], tags[a:z], arrivals[a:z], user, self._builder,
                    lambda i, e: self._refuse(arrivals[a + i], topics[a + i], payloads[a + i], e))
        for name, n in route.decoder.take_counts().items():   # e.g. text_fields_dropped
            self.ctx.count(name, n)

    def _refuse(self, arrival: float, topic: str, payload: bytes, e: Exception) -> None:
        if isinstance(e, DecodeError):
            self._reject(arrival, topic, e.reason, e.detail, payload)
        else:     # a decoder bug must not stop the source: dead-letter and go on
            log.error("%s: decoding a message on %r failed", self.where, topic, exc_info=e)
            self._reject(arrival, topic, "undecodable", f"decoder error {type(e).__name__}: {e}", payload)

    def _reject(self, arrival: float, topic: str, reason: str, detail: str, payload: bytes) -> None:
        keep = self.config.deadletter_max_bytes
        b64 = base64.b64encode(payload[:keep]).decode()
        self._dead.append((arrival, topic, reason, detail, b64))
        if self.deadletter_topic:
            self.conn.client.publish(self.deadletter_topic, json.dumps({
                "reason": reason, "detail": detail, "source": self.config.id, "topic": topic, "ts": arrival,
                "payload_bytes": len(payload), "truncated": len(payload) > keep, "payload_b64": b64}), qos=1)

    def run(self, emit, stop: threading.Event) -> None:
        self.conn.start()
        sent = 0
        try:
            while not stop.wait(0 if self._left else self.config.emit_interval):
                if self.conn.error:
                    raise ConnectionError(self.conn.error)
                sent = self._emit(emit, sent)
            end = self._seq
            while sent < end:
                sent = self._emit(emit, sent)
        finally:
            self.conn.close()

    def _emit(self, emit, sent: int) -> int:
        """Decode and emit the next chunk of queued messages; return the position (seq of its last message)."""
        if not self._left:       # take what the network thread queued
            with self._lock:
                seq = self._seq
                if seq == sent:
                    return sent
                self._taken = (self._arrivals, self._topic_in, self._payloads, self._props)
                self._arrivals, self._topic_in, self._payloads = [], [], []
                if self._props is not None:
                    self._props = []
                self._left = len(self._taken[2])
            self._first_seq = seq - self._left + 1
        arrivals, topics, payloads, props = self._taken
        # A chunk of about _CHUNK_READINGS: the pipeline works (and acknowledges) while the next chunk is decoded
        a = len(payloads) - self._left
        z = min(len(payloads), a + max(1, int(_CHUNK_READINGS / self._per_message)))
        self._decode(arrivals[a:z], topics[a:z], payloads[a:z], props[a:z] if props is not None else None)
        self.ctx.count("bytes_in", sum(map(len, payloads[a:z])))   # bandwidth accounting: payload bytes received
        self._left = len(payloads) - z
        if not self._left:
            self._taken = _NOTHING
        rows = self._builder.build() if len(self._builder) else None
        self._per_message = max(1.0, (len(rows) if rows is not None else 0) / (z - a))
        dead, self._dead = self._dead, []
        for arrival, topic, reason, detail, b64 in dead:
            self.ctx.count(f"dead_lettered.{reason}", 1)
            self.ctx.dead_letter(Batch(np.array([arrival]), tags={"topic": np.array([topic], dtype=object)},
                                       extra={"payload_b64": np.array([b64], dtype=object)}),
                                 f"{self.where} topic {topic!r}: {reason}: {detail}")
        position = self._first_seq + z - 1
        emit(rows if rows is not None else Batch.empty(), position=position)
        return position

    def committed(self, position) -> None:
        """The pipeline processed every message up to ``position``: acknowledge the QoS>=1 ones."""
        gen, client = self.conn.generation, self.conn.client
        with self._lock:
            seqs, ids = self._ack_seq, self._ack_id
            while seqs and seqs[0] <= position:
                seqs.popleft()
                ack = ids.popleft()
                if ack >> 18 == gen:        # a message of an older connection is redelivered and acked afresh
                    client.ack(ack >> 2 & 0xFFFF, ack & 3)

    def restore(self, position) -> None:
        # Message sequence numbers do not survive a restart: the broker's session holds what is not acknowledged.
        pass

    def gauges(self) -> dict[str, float]:
        return {"connected": 1.0 if self.conn.connected.is_set() else 0.0}

    def close(self) -> None:
        self.conn.close()

