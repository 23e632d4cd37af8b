"""The ``mqtt`` source: readings from an MQTT broker (paho-mqtt 2, MQTT 5 or 3.1.1).

The network thread only queues each message with its arrival time: the pipeline clock when it was received,
journaled with the message, so a replay after a crash carries the original time; every row of the message gets
it as ``Batch.arrival``. Every ``emit_interval`` the source thread decodes what was queued with each
subscription's codec (json, json-batch, senml, frame; see ``connectors/mqtt/codecs.py``; runs of alike json
messages are decoded together, ``connectors/mqtt/bulk.py``) and hands the rows to the pipeline as one batch
whose position is the number of messages taken so far. QoS 1/2 messages are acknowledged (paho manual acks)
only when the runtime reports that position as processed (``committed``), so a crash or restart before that
makes the broker deliver them again (at-least-once).

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
import re
import threading
import zlib
from pathlib import Path
from typing import Literal

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.subscribeoptions import SubscribeOptions
from pydantic import Field, model_validator

from connectors.mqtt.bulk import decode_many
from connectors.mqtt.codecs import CodecOptions, Decoder, DecodeError
from connectors.mqtt.connection import Connection
from connectors.mqtt.inbox import Inbox
from connectors.mqtt.settings import MqttConnectionFields, default_client_id
from connectors.mqtt.rows import RowBuilder
from connectors.mqtt.subscriptions import SubscriptionMemory
from connectors.mqtt.topics import TopicTemplate
from pipeline.batch import Batch
from pipeline.config import SourceConfig
from pipeline.stage import Context, Source

log = logging.getLogger("edgesieve.mqtt")
_CHUNK_READINGS = 10_000         # about this many readings per batch handed on while a backlog is decoded


def journal_dir(state_dir, pipeline: str, source_id: str, where: str = "") -> Path:
    """``<state_dir>/journal/<pipeline>/<source id>``: each pipeline's own (two pipelines that share a state folder and
    a source id took turns in one journal before, and each replayed the other's messages). A name that is not a
    plain file name gets a hash of itself, so that two names never share a folder. The segments of a journal in the
    earlier place, ``<state_dir>/journal/<source id>``, are moved here the first time."""
    base = Path(state_dir) / "journal"
    name = pipeline or "pipeline"
    if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*", name):
        name = f"{re.sub(r'[^A-Za-z0-9_-]', '_', name)}-{zlib.crc32(name.encode()):08x}"
    folder = base / name / source_id
    legacy = base / source_id
    old = sorted(legacy.glob("*.journal")) + sorted(legacy.glob("committed")) if legacy.is_dir() else []
    if old and not any(folder.glob("*.journal")):
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        for f in old:
            f.rename(folder / f.name)
        log.info("%s: moved the input journal %s to %s (one folder per pipeline)", where, legacy, folder)
    elif old:
        log.warning("%s: %s holds journal segments of the earlier layout, and %s has its own: not moved, not "
                    "replayed (move them aside once nothing needs them)", where, legacy, folder)
    return folder


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
    status: bool = Field(True, description="Publish retained online/offline (last will) on edgesieve/{node}/{pipeline}/status.")
    deadletter_topic: str | None = Field(
        "edgesieve/{node}/deadletter", description="Where undecodable messages are published; null: only counted and logged.")
    deadletter_max_bytes: int = Field(1024, ge=0, le=1_048_576, description="Payload bytes kept (base64) in a dead-letter message.")
    journal_fsync: Literal["full", "normal", "off"] = Field(
        "full", description="Input journal (checkpoints on): `full` fsyncs before acknowledging (survives power loss); "
        "`normal` survives a crash of edgesieve, not of the host; `off`: the OS decides.")
    redelivery_horizon: int = Field(
        50_000, ge=0, le=60_000, description="Persistent sessions: the last this many QoS>=1 messages are remembered "
        "(topic, payload, packet id) and a redelivery of one is dropped (`duplicates`); 0 turns it off. At least receive_maximum.")
    retained: Literal["dedupe", "ignore", "all"] = Field(
        "dedupe", description="Retained copies (what the broker sends for a new subscription, at every start and reconnect): "
        "`dedupe` takes one only when it is not the last message taken on its topic (`retained_copies` counts the others); "
        "`ignore` takes none; `all` takes every one (each start counts the last retained reading of a topic again).")

    @model_validator(mode="after")
    def _check(self):
        if self.deadletter_topic is not None:
            try:
                self.deadletter_topic.format(node="n")
            except (KeyError, IndexError, ValueError):
                raise ValueError(f"deadletter_topic {self.deadletter_topic!r}: the only placeholder is {{node}}") from None
        if 0 < self.redelivery_horizon < self.receive_maximum:
            raise ValueError(f"redelivery_horizon ({self.redelivery_horizon}) must be at least receive_maximum "
                             f"({self.receive_maximum}): every unacknowledged message can come again")
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
        self._per_message = 100.0                    # readings per message lately (until measured: small chunks)
        self._builder = RowBuilder()                 # source thread only
        self._clock = ctx.clock                      # arrival stamps: the pipeline clock (the window stage's "now")
        self._dead: list[tuple[float, str, str, str, str]] = []   # (arrival, topic, reason, detail, payload_b64)
        self._restored = 0                           # journal position the checkpoint covers
        self._halted = False                         # stopping, and the pipeline no longer takes batches
        self.deadletter_topic = (config.deadletter_topic.format(node=config.node_name)
                                 if config.deadletter_topic else None)
        client_id = config.client_id or default_client_id(config.node_name, ctx.pipeline, config.id, ctx.state_dir)
        self.conn = Connection(config, where=self.where, pipeline=ctx.pipeline, client_id=client_id,
                               persistent=config.persistent, session_expiry=config.session_expiry,
                               receive_maximum=config.receive_maximum, manual_ack=True, status=config.status,
                               on_connect=self._subscribe,
                               paused=lambda: self.inbox.pending() * self._per_message >= config.max_pending)
        durable = getattr(ctx, "checkpoints", False)
        self.inbox = Inbox(self.conn, where=self.where, count=ctx.count,
                           journal_dir=journal_dir(ctx.state_dir, ctx.pipeline, config.id, self.where) if durable else None,
                           fsync=config.journal_fsync, keep_props=any(r.props for r in self._routes),
                           horizon=config.redelivery_horizon if config.persistent else None,
                           retained=config.retained)
        self.subscriptions = SubscriptionMemory(Path(ctx.state_dir) / "mqtt" / f"{client_id}.subscriptions.json",
                                                where=self.where)
        self.conn.client.on_message = self._on_message
        self.conn.client.on_unsubscribe = lambda *a: self.subscriptions.unsubscribed()

    # -- network thread ---------------------------------------------------------------------------
    def _subscribe(self, client: mqtt.Client, session_present: bool) -> None:
        # Always (re)subscribe: essential when the session is gone. A broker sends retained copies for a subscription
        # made again (3.1.1, MQTT 5 retain handling 0); the inbox drops the ones it took already (retained.py).
        if self.conn.v5:        # retain handling: 1 sends copies only for a subscription the session lacks, 2 none
            handling = {"dedupe": 1, "ignore": 2, "all": 0}[self.config.retained]
            topics = [(s.subscribe_topic(), SubscribeOptions(qos=s.qos, retainHandling=handling))
                      for s in self.config.subscriptions]
        else:
            topics = [(s.subscribe_topic(), s.qos) for s in self.config.subscriptions]
        self.inbox.connected(self.conn.generation, session_present)
        stale = self.subscriptions.connecting([t for t, _ in topics], session_present)
        client.subscribe(topics)
        log.info("%s: subscribed to %s", self.where, ", ".join(t for t, _ in topics))
        if stale:
            client.unsubscribe(stale)
            log.info("%s: unsubscribed from %s (kept by the persistent session, no longer configured)",
                     self.where, ", ".join(stale))

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        self.inbox.put(self._clock(), msg.topic, msg.payload, msg.mid, msg.qos, msg.properties, msg.retain)

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
        user = props[a:z] if route.props else None
        decode_many(route.decoder, payloads[a:z], tags[a:z], arrivals[a:z], user, self._builder,
                    lambda i, e: self._refuse(arrivals[a + i], topics[a + i], payloads[a + i], e))
        for name, n in route.decoder.take_counts().items():   # e.g. text_fields_dropped
            self.ctx.count(name, n)

    def _refuse(self, arrival: float, topic: str, payload: bytes, e: Exception) -> None:
        if isinstance(e, DecodeError):   # a refused reading of a kept message carries only itself
            self._reject(arrival, topic, e.reason, e.detail, getattr(e, "payload", None) or payload)
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
        inbox = self.inbox
        inbox.open(self._restored)
        self.conn.start()
        try:
            while not stop.wait(0 if inbox.has_ready() else self.config.emit_interval):
                if self.conn.error:
                    raise ConnectionError(self.conn.error)
                inbox.take()
                self._emit(emit, stop)
                inbox.prune()
            inbox.take()
            while not self._halted and self._emit(emit, stop):
                pass
        finally:
            self.conn.close()
            inbox.take()        # journaled (acknowledged or not): handed on after a restart
            inbox.close()

    def _emit(self, emit, stop: threading.Event) -> bool:
        """Decode and emit the next chunk of received messages; False when there was none."""
        # A chunk of about _CHUNK_READINGS: the pipeline works while the next chunk is decoded
        chunk = self.inbox.next_chunk(max(1, int(_CHUNK_READINGS / self._per_message)))
        if chunk is None:
            return False
        self._decode(chunk.arrivals, chunk.topics, chunk.payloads, chunk.user)
        self.ctx.count("bytes_in", sum(map(len, chunk.payloads)))   # bandwidth accounting: payload bytes received
        rows = self._builder.build() if len(self._builder) else None
        self._per_message = max(1.0, (len(rows) if rows is not None else 0) / len(chunk.payloads))
        dead, self._dead = self._dead, []
        for arrival, topic, reason, detail, b64 in dead:
            self.ctx.count(f"dead_lettered.{reason}", 1)
            self.ctx.dead_letter(Batch(np.array([arrival]), tags={"topic": np.array([topic], dtype=object)},
                                       extra={"payload_b64": np.array([b64], dtype=object)}, arrival=np.array([arrival])),
                                 f"{self.where} topic {topic!r}: {reason}: {detail}")
        if emit(rows if rows is not None else Batch.empty(), position=chunk.position) is False and stop.is_set():
            # Stopping with a full queue: this chunk was not taken. Nothing after it may be (a later position
            # in the checkpoint would skip it); the journal hands it on after the restart.
            self._halted = True
            return False
        return True

    def committed(self, position) -> None:
        """Checkpoints on: the checkpoint covers ``position`` (journal segments may go); off: acknowledge up to it."""
        self.inbox.committed(position)

    def restore(self, position) -> None:
        """The checkpoint's journal position: the journaled messages after it are handed on again at start."""
        self._restored = int(position or 0)

    def gauges(self) -> dict[str, float]:
        return {"connected": 1.0 if self.conn.connected.is_set() else 0.0}

    def close(self) -> None:
        self.conn.close()

