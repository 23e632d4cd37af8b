"""A real VictoriaMetrics for tests and benchmarks, started from the Debian binary.

VictoriaMetrics accepts InfluxDB line protocol on ``/api/v2/write`` (what influxdb-client sends)
and answers ``/api/v1/export`` with the raw samples, which is how tests check what landed.

How line protocol maps to VictoriaMetrics series (checked against the packaged binary):

- ``win,device=d1 temp_mean=1.5,temp_count=3 <ts>`` becomes two series, ``win_temp_mean{device="d1"}``
  and ``win_temp_count{device="d1"}``: metric name = ``{measurement}_{field}``, tags become labels.
- ``org`` and ``bucket`` on ``/api/v2/write`` add no label; booleans land as 1/0; a malformed line is
  logged and skipped, and the request still answers 204 (so 400 handling is tested with ``http_stub``).
- Deduplication is off (no ``-dedup.minScrapeInterval``): a point written twice with the same timestamp
  is stored twice. InfluxDB would overwrite it; here the duplicate stays visible, which is exactly what
  a test that checks "no point twice" needs.
- ``/api/v1/export`` ends at *now* by default: points with future timestamps land but are not exported.

>>> VictoriaMetrics.available() in (True, False)
True
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

BINARY = "/usr/bin/victoria-metrics"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VictoriaMetrics:
    """Start, stop and restart one VictoriaMetrics process on a fixed loopback port with its own storage.

    ``stop()`` then ``start()`` reuses the same port and storage directory (what an outage looks like
    to a client); ``close()`` removes the storage directory if this object created it.
    """

    def __init__(self, port: int | None = None, data_dir: str | Path | None = None, binary: str = BINARY):
        self.binary = binary
        self.port = port or free_port()
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="edgesieve-vm-"))
        self.proc: subprocess.Popen | None = None
        self.log_path = self.data_dir / "victoria.log"

    @staticmethod
    def available(binary: str = BINARY) -> bool:
        return os.access(binary, os.X_OK)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> "VictoriaMetrics":
        if self.proc is not None and self.proc.poll() is None:
            return self
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [self.binary, f"-httpListenAddr=127.0.0.1:{self.port}",
             f"-storageDataPath={self.data_dir / 'data'}", "-retentionPeriod=100y",
             "-loggerLevel=ERROR", "-memory.allowedPercent=20", "-search.disableCache"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"victoria-metrics exited with {self.proc.returncode} on port {self.port}; "
                                   f"log: {self.log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                    if r.read().strip() == b"OK":
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"victoria-metrics on port {self.port} not ready after {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGTERM); the port goes dark, data stays on disk."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = None
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> "VictoriaMetrics":
        self.stop()
        return self.start()

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> "VictoriaMetrics":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # --- reading back what landed -------------------------------------------------------------
    def _get(self, path: str, params: dict | None = None) -> bytes:
        q = ("?" + urllib.parse.urlencode(params, doseq=True)) if params else ""
        with urllib.request.urlopen(self.url + path + q, timeout=10) as r:
            return r.read()

    def force_flush(self) -> None:
        """Make everything written so far visible to export (otherwise it takes up to a second)."""
        self._get("/internal/force_flush")

    def export(self, match: str = '{__name__!=""}', start: float | None = None, end: float | None = None) -> list[dict]:
        """Raw series as VictoriaMetrics stores them: ``[{"metric": {...}, "values": [...], "timestamps": [ms...]}]``.

        ``start``/``end`` (seconds since the epoch) widen the time range, e.g. to see points stamped in the future."""
        self.force_flush()
        params = {"match[]": match}
        if start is not None:
            params["start"] = f"{start:.3f}"
        if end is not None:
            params["end"] = f"{end:.3f}"
        body = self._get("/api/v1/export", params)
        return [json.loads(line) for line in body.splitlines() if line.strip()]

    def samples(self, match: str = '{__name__!=""}', start: float | None = None,
                end: float | None = None) -> dict[tuple, list[tuple[int, float]]]:
        """``{(metric_name, ((label, value), ...)): [(ts_ms, value), ...]}`` sorted by time; duplicates kept."""
        out: dict[tuple, list[tuple[int, float]]] = {}
        for s in self.export(match, start, end):
            labels = dict(s["metric"])
            name = labels.pop("__name__")
            key = (name, tuple(sorted(labels.items())))
            out.setdefault(key, []).extend(zip(s["timestamps"], s["values"]))
        for v in out.values():
            v.sort()
        return out

    def count(self, match: str = '{__name__!=""}') -> int:
        """Number of stored samples (duplicates included)."""
        return sum(len(s["values"]) for s in self.export(match))
