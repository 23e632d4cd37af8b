"""A paho-mqtt 2 client that publishes the simulator's messages: MQTT 5 (user property ``ts`` on frames) or 3.1.1,
username/password, TLS, automatic reconnects, and bounded waiting so a fast simulator never floods memory.

>>> split_url("mqtt://127.0.0.1:1884")
('mqtt', '127.0.0.1', 1884)
>>> split_url("broker.local")
('mqtt', 'broker.local', 1883)
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

log = logging.getLogger("edgesieve.simulate")


def split_url(url: str) -> tuple[str, str, int]:
    if "://" not in url:
        url = "mqtt://" + url
    u = urlsplit(url)
    if u.scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"--url {url!r}: use mqtt://host:1883 or mqtts://host:8883")
    if u.username or u.password:
        raise ValueError("--url must not contain credentials: use --username and MQTT_PASSWORD or --password-file")
    if not u.hostname:
        raise ValueError(f"--url {url!r} has no host")
    return u.scheme, u.hostname, u.port or (8883 if u.scheme == "mqtts" else 1883)


class Publisher:
    """Connects on construction (raises ConnectionError with what to do when it cannot) and publishes."""

    def __init__(self, url: str, client_id: str = "", qos: int = 0, protocol: str = "5",
                 username: str | None = None, password: str | None = None, ca_file: str | None = None,
                 insecure: bool = False, connect_timeout: float = 10.0, max_inflight: int = 1000):
        scheme, self.host, self.port = split_url(url)
        self.url, self.qos = url, qos
        self.v5 = protocol == "5"
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311)
        self.client.max_inflight_messages_set(max_inflight)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(0.5, 10)
        if username:
            self.client.username_pw_set(username, password)
        if scheme == "mqtts":
            self.client.tls_set(ca_certs=ca_file, cert_reqs=ssl.CERT_REQUIRED)
            if insecure:
                log.warning("TLS hostname verification is off (--insecure)")
                self.client.tls_insecure_set(True)
        self._connected = threading.Event()
        self._answered = threading.Event()
        self._refused: str | None = None
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self._pending: list = []
        self._closing = False
        try:
            self.client.connect(self.host, self.port, keepalive=30)
        except (OSError, ValueError) as exc:
            raise ConnectionError(f"cannot connect to the MQTT broker at {url} ({exc.strerror or exc}): "
                                  "start one (e.g. mosquitto -p 1883) or pass --url") from None
        self.client.loop_start()
        self._answered.wait(connect_timeout)
        if not self._connected.is_set():
            self.client.loop_stop()
            why = self._refused or "no answer"
            if self._refused:
                raise ConnectionError(f"the MQTT broker at {url} {why}: check --username and the password "
                                      "($MQTT_PASSWORD or --password-file)")
            raise ConnectionError(f"cannot connect to the MQTT broker at {url} ({why}) within {connect_timeout:.0f}s: "
                                  "start one (e.g. mosquitto -p 1883) or pass --url")

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refused = f"refused: {reason_code}"
            self._answered.set()
            client.disconnect()
            return
        log.info("connected to %s", self.url)
        self._connected.set()
        self._answered.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected.clear()
        if self._closing:
            return
        log.warning("disconnected from %s (%s); reconnecting", self.url, reason_code)

    def publish(self, topic: str, payload: bytes, user_properties: dict | None = None) -> bool:
        props = None
        if user_properties and self.v5:
            props = Properties(PacketTypes.PUBLISH)
            props.UserProperty = [(k, str(v)) for k, v in user_properties.items()]
        info = self.client.publish(topic, payload, qos=self.qos, properties=props)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            return False
        self._pending.append(info)
        if len(self._pending) >= 500:   # bounded: wait until the oldest half has left the client
            for old in self._pending[:250]:
                try:
                    old.wait_for_publish(timeout=10)
                except (RuntimeError, ValueError):
                    pass
            del self._pending[:250]
        return True

    def close(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        for info in self._pending:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                info.wait_for_publish(timeout=left)
            except (RuntimeError, ValueError):
                break
        self._pending.clear()
        self._closing = True
        self.client.disconnect()
        self.client.loop_stop()
