"""The demo's embedded MQTT broker: Mosquitto when it is installed, else amqtt started in-process.

Mosquitto speaks MQTT 5 (user properties carry frame timestamps); amqtt speaks 3.1.1 only, so the demo then
runs its clients on 3.1.1 (``broker.protocol``). Both listen on a free loopback port and stop with ``close()``.

>>> b = EmbeddedBroker.choose("mqtt://127.0.0.1:1883")     # an external broker: nothing is started
>>> b.kind, b.url, b.protocol
('external', 'mqtt://127.0.0.1:1883', '5')
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mosquitto() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").is_file() else None


def _wait_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


class EmbeddedBroker:
    """A broker for the demo; ``choose()`` picks one (an external url, Mosquitto, or amqtt)."""

    def __init__(self, kind: str, url: str, protocol: str = "5"):
        self.kind, self.url, self.protocol = kind, url, protocol
        self._proc: subprocess.Popen | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker = None
        self._thread: threading.Thread | None = None

    @classmethod
    def choose(cls, url: str | None = None, prefer: str = "auto") -> "EmbeddedBroker":
        if url:
            return cls("external", url, "5" if prefer != "amqtt" else "3.1.1")
        if prefer in ("auto", "mosquitto") and _mosquitto():
            return cls._start_mosquitto()
        if prefer == "mosquitto":
            raise RuntimeError("mosquitto is not installed: apt-get install mosquitto (or use --broker amqtt)")
        return cls._start_amqtt()

    @classmethod
    def _start_mosquitto(cls) -> "EmbeddedBroker":
        port = free_port()
        tmp = tempfile.TemporaryDirectory(prefix="edgesieve-demo-mosquitto-")
        conf = Path(tmp.name) / "mosquitto.conf"
        lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence false", "max_queued_messages 100000"]
        import os
        if os.geteuid() == 0:   # as root mosquitto switches to the user "mosquitto"; stay root in a temp dir
            lines.append("user root")
        conf.write_text("\n".join(lines) + "\n")
        proc = subprocess.Popen([_mosquitto(), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        b = cls("mosquitto", f"mqtt://127.0.0.1:{port}", "5")
        b._proc, b._tmp = proc, tmp
        if not _wait_port(port, 10):
            err = proc.stderr.read().decode(errors="replace")[-300:] if proc.poll() is not None else ""
            b.close()
            raise RuntimeError(f"mosquitto did not start on port {port}: {err or 'no answer'}")
        return b

    @classmethod
    def _start_amqtt(cls) -> "EmbeddedBroker":
        try:
            from amqtt.broker import Broker
        except ImportError:
            raise RuntimeError("no MQTT broker: install mosquitto (apt-get install mosquitto) or amqtt "
                               "(pip install amqtt), or pass --mqtt-url of a running broker") from None
        import logging
        logging.getLogger("amqtt").setLevel(logging.WARNING)
        logging.getLogger("transitions").setLevel(logging.WARNING)
        port = free_port()
        config = {"listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
                  "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}}
        b = cls("amqtt", f"mqtt://127.0.0.1:{port}", "3.1.1")
        b._loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(b._loop)
            try:
                b._broker = Broker(config, loop=b._loop)
                b._loop.run_until_complete(b._broker.start())
            except BaseException as exc:  # reported to the caller below
                failure.append(exc)
                started.set()
                return
            started.set()
            b._loop.run_forever()

        b._thread = threading.Thread(target=run, name="amqtt-broker", daemon=True)
        b._thread.start()
        started.wait(15)
        if failure or not _wait_port(port, 5):
            raise RuntimeError(f"amqtt did not start: {failure[0] if failure else 'no answer'}")
        return b

    def close(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self._loop is not None and self._broker is not None:
            try:
                asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop).result(10)
            except Exception:  # noqa: BLE001 - best effort at exit
                pass
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(5)
            self._loop = self._broker = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "EmbeddedBroker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
