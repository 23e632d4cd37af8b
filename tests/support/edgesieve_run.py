"""``edgesieve run`` in a subprocess with live metrics, for tests that kill (-9) and restart it mid-stream."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
import uuid

from tests.support.cli import cli_env, metric
from tests.support.mosquitto import free_port
from tests.support.waiting import wait_until


class Run:
    """``edgesieve run PATH`` whose pipeline clock is ``offset`` seconds ahead (tests/support/offset_clock.py)."""

    def __init__(self, path, offset: float = 0.0):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.offset_clock", str(offset), "run", str(path), "--metrics-port",
             str(self.port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env())
        wait_until(lambda: self.count("in", "out") >= 0 or self.proc.poll() is not None, what="edgesieve to start")
        assert self.proc.poll() is None, self.proc.communicate()[1].decode()[-3000:]

    def count(self, item: str, event: str | None, name: str = "edgesieve_records_total") -> int:
        return metric(self.port, item, event, name)

    def connected(self, source: str = "in") -> bool:
        """The source's ``edgesieve_connected`` gauge is 1."""
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2).read().decode()
        except OSError:
            return False
        return any(line.startswith("edgesieve_connected{") and f'item="{source}"' in line
                   and float(line.rsplit(" ", 1)[1]) == 1 for line in text.splitlines())

    def kill(self) -> str:
        os.kill(self.proc.pid, signal.SIGKILL)
        return self.proc.communicate(timeout=10)[1].decode()

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, err.decode()[-3000:]
        return err.decode()


def publish_all(pub, messages) -> None:
    """Publish ``(topic, payload)`` pairs in order without waiting between them, then wait for every one."""
    infos = [pub.publish(topic, payload, wait=False) for topic, payload in messages]
    for info in infos:
        info.wait_for_publish(20)
        assert info.is_published()


def publish_readings(pub, prefix: str, readings) -> None:
    """Publish ``(device, payload)`` pairs to ``{prefix}/{device}`` in order (see :func:`publish_all`)."""
    publish_all(pub, ((f"{prefix}/{device}", payload) for device, payload in readings))


def mqtt_source(url: str, prefix: str, **extra) -> dict:
    """The pipeline-file entry of source ``in``: JSON readings on ``{prefix}/{device}`` at QoS 1, a node id of its own
    (so its persistent session is its own), quick reconnects."""
    return {"id": "in", "type": "mqtt", "url": url, "node": f"gw-{uuid.uuid4().hex[:6]}",
            "reconnect": {"min_delay": 0.05, "max_delay": 0.3}, "emit_interval": 0.01,
            "subscriptions": [{"topic_template": f"{prefix}/{{device}}", "codec": "json", "qos": 1}], **extra}


def durable_runtime(folder, name: str, interval: str) -> dict:
    """The ``runtime:`` of a pipeline with checkpoints every ``interval`` and a dead-letter file, all in ``folder``."""
    return {"batching": {"max_wait": 0.02}, "tick": 0.02, "state_dir": str(folder / "state"),
            "checkpoint": {"path": str(folder / "state" / f"{name}.checkpoint"), "interval": interval},
            "dead_letter": str(folder / "dead.ndjson")}
