"""Fixtures for the run/simulate/demo/compose tests: a real Mosquitto broker and a unique topic prefix per test."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Broker:
    """A plain anonymous Mosquitto on a free loopback port (tests.support.mosquitto is used when present)."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        conf = workdir / "mosquitto.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.close()
        raise RuntimeError("mosquitto did not start")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def mqtt_broker(tmp_path_factory):
    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed (apt-get install mosquitto mosquitto-clients)")
    workdir = tmp_path_factory.mktemp("mosquitto-run")
    try:
        from tests.support.mosquitto import Mosquitto
    except ImportError:
        b = _Broker(workdir)
        yield b
        b.close()
        return
    with Mosquitto(workdir) as b:
        yield b


@pytest.fixture
def prefix(request) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", request.node.name)[:40]
    return f"t/{name}-{uuid.uuid4().hex[:6]}"
