"""The network side the ``mqtt`` source and sink share: a paho client, its status topic, and a network thread
that reconnects with exponential backoff and jitter (settings in ``connectors/mqtt/settings.py``).

All paho calls that write to the socket happen on the network thread; other threads (the pipeline's acks,
the sink's publishes) only queue packets, which wakes the thread. Reconnect delays come from the project's one
backoff (``pipeline.backoff.Backoff``: doubling up to ``reconnect.max_delay``, "equal jitter" in [d/2, d]).
"""

from __future__ import annotations

import json
import logging
import re
import ssl
import threading
import time
from pathlib import Path
from typing import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from connectors.mqtt.settings import MqttConnectionFields, TlsOptions, credentials, parse_url
from pipeline import __version__ as VERSION
from pipeline.backoff import Backoff

log = logging.getLogger("edgesieve.mqtt")
_AUTH_REFUSALS = {"Bad user name or password", "Not authorized", "Banned"}


def status_topic(node: str, pipeline: str) -> str:
    """``edgesieve/{node}/{pipeline}/status``: one retained status per pipeline and node (MQTT wildcards replaced)."""
    return f"edgesieve/{node}/{re.sub(r'[/+#]', '_', pipeline)}/status"


def status_payload(state: str, node: str, pipeline: str) -> bytes:
    return json.dumps({"status": state, "node": node, "pipeline": pipeline, "version": VERSION}).encode()


class _BufferedSocket:
    """paho's socket, read 64 KiB at a time.

    paho reads each packet with three or more recv() calls (type byte, length bytes, body), each a system call that
    also hands the GIL to another thread. Serving those reads from one large recv() removes them. ``pending()``
    tells paho's loop that bytes are buffered (its mechanism for TLS), and the network loop drains the buffer.
    Everything else is delegated to the socket.
    """

    __slots__ = ("_sock", "_data", "_pos", "_inner_pending")

    def __init__(self, sock):
        self._sock, self._data, self._pos = sock, b"", 0
        self._inner_pending = getattr(sock, "pending", None)    # TLS sockets buffer too

    def recv(self, n: int) -> bytes:
        data, pos = self._data, self._pos
        if pos >= len(data):
            data = self._sock.recv(max(n, 65_536))     # BlockingIOError / ssl.SSLWantReadError pass through to paho
            if len(data) <= n:
                self._data, self._pos = b"", 0
                return data
            pos = 0
        end = min(pos + n, len(data))
        self._data, self._pos = data, end
        return data[pos:end]

    def pending(self) -> int:
        buffered = len(self._data) - self._pos
        inner = self._inner_pending
        return buffered + inner() if inner is not None else buffered

    def __getattr__(self, name):
        return getattr(self._sock, name)


class _CoalescedWake:
    """paho's wake-up socket, written at most once per turn of the network loop.

    paho writes one byte to it for every packet another thread queues (an acknowledgement, a publish), a system
    call each, to end the network loop's select(). One byte per turn is enough: the loop re-arms it before each
    select(), and a packet queued before that is seen by paho's want_write() anyway.
    """

    __slots__ = ("_sock", "_armed")

    def __init__(self, sock):
        self._sock, self._armed = sock, True

    def send(self, data: bytes) -> int:
        if not self._armed:
            return len(data)
        self._armed = False
        return self._sock.send(data)

    def arm(self) -> None:
        self._armed = True

    def __getattr__(self, name):
        return getattr(self._sock, name)


class Connection:
    """A paho client plus the thread that runs its network loop and reconnects. See the module docstring."""

    def __init__(self, cfg: MqttConnectionFields, *, where: str, pipeline: str, client_id: str,
                 persistent: bool = False, session_expiry: int = 0, receive_maximum: int | None = None,
                 manual_ack: bool = False, status: bool = False, max_inflight: int = 20,
                 on_connect: Callable[[mqtt.Client, bool], None] | None = None,
                 paused: Callable[[], bool] | None = None):
        self.cfg, self.where, self.pipeline = cfg, where, pipeline
        self.scheme, self.host, self.port = parse_url(cfg.url)
        self.v5 = cfg.protocol == "5"
        self.persistent, self.session_expiry, self.receive_maximum = persistent, session_expiry, receive_maximum
        self._user_on_connect, self._paused = on_connect, paused or (lambda: False)
        self.connected = threading.Event()
        self.generation = 0                 # +1 per successful connect: acks of older connections are void
        self.ever_connected = False
        self.error: str | None = None       # fatal: refused credentials, untrusted certificate
        self.status_topic = status_topic(cfg.node_name, pipeline) if status else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311,
                                  clean_session=None if self.v5 else not persistent, manual_ack=manual_ack)
        # Writes only on the network thread: a registered write-callback stops paho from writing from the
        # calling thread; the loop sees pending packets through want_write() and is woken by paho's socketpair.
        self.client.on_socket_register_write = lambda *a: None
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        user, pw = credentials(cfg, where)
        if user is not None:
            self.client.username_pw_set(user, pw.get_secret_value() if pw is not None else None)
        if self.scheme == "mqtts" or cfg.tls is not None:
            t = cfg.tls or TlsOptions()
            for f in (t.ca_file, t.cert_file, t.key_file):
                if f is not None and not Path(f).is_file():
                    raise ValueError(f"{where}: TLS file {f} does not exist")
            try:
                self.client.tls_set(ca_certs=t.ca_file, certfile=t.cert_file, keyfile=t.key_file,
                                    keyfile_password=t.key_passphrase(where), cert_reqs=ssl.CERT_REQUIRED,
                                    tls_version=ssl.PROTOCOL_TLS_CLIENT)
            except ssl.SSLError as exc:
                raise ValueError(f"{where}: cannot load the TLS files ({exc.reason or exc}): check tls.ca_file, "
                                 "tls.cert_file, tls.key_file and, for an encrypted key, tls.key_password(_file)") from None
            if t.insecure:
                log.warning("%s: tls.insecure is on: the broker's host name is NOT verified", where)
                self.client.tls_insecure_set(True)
        if self.status_topic:
            self.client.will_set(self.status_topic, status_payload("offline", cfg.node_name, pipeline), qos=1, retain=True)
        self.client.max_queued_messages_set(0)
        # paho does not read the broker's Receive Maximum; going over it is a protocol error (mosquitto: 20)
        self.client.max_inflight_messages_set(max_inflight)

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=f"mqtt:{self.where}", daemon=True)
        self._thread.start()

    def wait_connected(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.error:
            if self.connected.wait(0.05):
                return True
        return False

    def close(self, timeout: float = 5.0) -> None:
        """Publish offline status (when connected), disconnect cleanly, stop the thread."""
        if self._thread is None:
            return
        if self.connected.is_set() and self.status_topic:
            info = self.client.publish(self.status_topic, status_payload("offline", self.cfg.node_name, self.pipeline),
                                       qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=min(timeout, 2.0))
            except (RuntimeError, ValueError):
                pass
        self._stop.set()
        self.connected.clear()
        self._thread.join(timeout)
        self._thread = None

    # -- paho callbacks (network thread) --------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            name = str(reason_code)
            msg = f"{self.where}: broker {self.host}:{self.port} refused the connection: {name}"
            if name in _AUTH_REFUSALS or reason_code.value in (4, 5):
                msg += " (check username and password_env / password_file)"
                if not self.ever_connected:
                    self.error = msg
            log.error("%s", msg)
            return
        self.generation += 1
        self.ever_connected = True
        if self._user_on_connect is not None:      # subscribe first: "online" then means "receiving"
            self._user_on_connect(client, bool(flags.session_present))
        if self.status_topic:
            client.publish(self.status_topic, status_payload("online", self.cfg.node_name, self.pipeline), qos=1, retain=True)
        self.connected.set()
        log.info("%s: connected to %s:%d (session present: %s)", self.where, self.host, self.port, flags.session_present)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self.connected.is_set() and not self._stop.is_set():
            log.warning("%s: disconnected from %s:%d (%s); reconnecting", self.where, self.host, self.port, reason_code)
        self.connected.clear()

    # -- network thread --------------------------------------------------------------------------
    def _connect_once(self) -> None:
        self._connect_paho()
        sock = getattr(self.client, "_sock", None)       # paho private: see _BufferedSocket
        if sock is not None and not isinstance(sock, _BufferedSocket):
            self.client._sock = _BufferedSocket(sock)

    def _connect_paho(self) -> None:
        if self.v5:
            props = Properties(PacketTypes.CONNECT)
            if self.persistent:
                props.SessionExpiryInterval = self.session_expiry
            if self.receive_maximum:
                props.ReceiveMaximum = self.receive_maximum
            self.client.connect(self.host, self.port, self.cfg.keepalive,
                                clean_start=not self.persistent, properties=props)
        else:
            self.client.connect(self.host, self.port, self.cfg.keepalive)

    def _serve(self) -> None:
        """Run paho's loop until the connection ends or stop is asked."""
        c = self.client
        rc = mqtt.MQTT_ERR_SUCCESS
        while not self._stop.is_set() and rc == mqtt.MQTT_ERR_SUCCESS:
            if self._paused() and self.connected.is_set():
                rc = c.loop_write() if c.want_write() else c.loop_misc()
                time.sleep(0.002)
                continue
            wake = getattr(c, "_sockpairW", None)       # paho private, made by loop(): see _CoalescedWake
            if wake is not None:
                if not isinstance(wake, _CoalescedWake):
                    c._sockpairW = wake = _CoalescedWake(wake)
                wake.arm()
            rc = c.loop(timeout=0.05)
            sock = c.socket()
            if isinstance(sock, _BufferedSocket):   # packets already in the read buffer: no select() needed
                pending, paused, read = sock.pending, self._paused, c.loop_read
                burst = 0
                while rc == mqtt.MQTT_ERR_SUCCESS and burst < 1000 and pending() and not paused():
                    rc = read()
                    burst += 1

    def _loop(self) -> None:
        delays = Backoff(self.cfg.reconnect.min_delay, self.cfg.reconnect.max_delay, jitter=0.5)
        c = self.client
        while not self._stop.is_set():
            try:
                self._connect_once()
            except ssl.SSLCertVerificationError as e:
                msg = (f"{self.where}: TLS certificate of {self.host}:{self.port} not trusted: {e.verify_message}; "
                       "set tls.ca_file to the CA that signed it")
                if not self.ever_connected:
                    self.error = msg
                    log.error("%s", msg)
                    return
                log.error("%s", msg)
            except (OSError, ssl.SSLError) as e:
                log.warning("%s: cannot connect to %s:%d: %s", self.where, self.host, self.port, e)
            else:
                generation = self.generation
                try:
                    self._serve()
                except Exception:        # a bug in a callback must not end reconnecting: log it, start over
                    log.exception("%s: MQTT network loop failed; reconnecting", self.where)
                if self.error:
                    c.disconnect()
                    return
                if self._stop.is_set():
                    c.disconnect()
                    for _ in range(20):        # send DISCONNECT (and pending acks) before closing
                        if c.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                            break
                    return
                self.connected.clear()
                if self.generation != generation:    # it was connected: start the backoff afresh
                    delays.reset()
            if self._stop.wait(delays.next()):
                return
