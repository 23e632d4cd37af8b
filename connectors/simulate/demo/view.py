"""What the demo watches while it runs: the live terminal view (rich) and the figures of its summary.

``DemoStats`` gathers, about twice a second: the pipeline's counters, the simulator's counts, the redundancy
cache's hit rate, the anomalous readings the pipeline wrote (``anomalies.ndjson``) and the alerts it published
back over MQTT. ``samples`` keeps the history for the PNG report.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from pipeline.bandwidth import human_bytes


class DemoStats:
    def __init__(self, pipeline, sim, out_dir: Path, camera_stage: str = "count", motion_stage: str = "motion"):
        self.pipeline, self.sim, self.out_dir = pipeline, sim, Path(out_dir)
        self.camera_stage, self.motion_stage = camera_stage, motion_stage
        self.started = time.monotonic()
        self.samples: list[dict] = []
        self.flagged: Counter = Counter()
        self.flagged_ts: dict[str, list[float]] = defaultdict(list)
        self.alerts: Counter = Counter()
        self.truth: Counter = Counter()
        self.truth_ts: dict[str, list[float]] = defaultdict(list)
        self.readings: dict[str, list[tuple[float, dict]]] = defaultdict(list)
        self.lock = threading.Lock()
        self._offset = 0
        self.reading_bytes = self.frame_bytes = 0   # what devices sent, readings and frames apart
        self.camera_note: str | None = None         # what the cameras show (said plainly when generated)

    # -- inputs from other threads ------------------------------------------------------------
    def on_alert(self, topic: str, payload: bytes) -> None:
        device = topic.rsplit("/", 1)[-1]
        with self.lock:
            self.alerts[device] += 1

    def on_truth(self, rec: dict) -> None:
        if rec.get("anomaly"):
            with self.lock:
                self.truth[rec["device"]] += 1
                self.truth_ts[rec["device"]].append(rec["ts"])

    def on_reading(self, device: str, payload: bytes, sent: bool = True) -> None:
        doc = json.loads(payload)
        with self.lock:
            self.readings[device].append((doc.pop("ts"), doc))
            if sent:
                self.reading_bytes += len(payload)

    def on_frame(self, nbytes: int) -> None:
        with self.lock:
            self.frame_bytes += nbytes

    # -- polled on the pipeline thread ---------------------------------------------------------
    def _read_flagged(self) -> None:
        path = self.out_dir / "anomalies.ndjson"
        try:
            with open(path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return
        end = data.rfind(b"\n") + 1
        self._offset += end
        for line in data[:end].splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            dev = rec.get("tags", {}).get("device", "?")
            self.flagged[dev] += 1
            self.flagged_ts[dev].append(rec.get("ts"))

    def cache_stats(self) -> dict:
        stage = getattr(self.pipeline.graph, "stages", {}).get(self.camera_stage)
        try:
            return (stage.cache_stats() or {}) if stage is not None else {}
        except Exception:  # noqa: BLE001 - a view must never stop the pipeline
            return {}

    def sample(self) -> dict:
        self._read_flagged()
        c = self.pipeline.metrics.by_item()
        motion = c.get(self.motion_stage, {})
        cache = self.cache_stats()
        s = self.sim.stats
        bytes_in = sum(v.get("bytes_in", 0) for v in c.values()) or s.bytes
        # what leaves the site: alerts over MQTT, and the aggregates (sent to InfluxDB, or, without it, their size
        # as line protocol measured from the local store)
        bytes_out = c.get("to_devices", {}).get("bytes_out", 0) + (
            c["cloud"].get("bytes_out", 0) if "cloud" in c else self.aggregate_bytes())
        snap = {"t": time.monotonic() - self.started, "messages": s.messages, "readings": s.readings,
                "frames": s.frames, "received": c.get("devices", {}).get("out", 0),
                "frames_in": motion.get("in", 0), "reused": motion.get("reused", 0),
                "cache_hit_rate": cache.get("hit_rate", 0.0), "cache_hits": sum(cache.get(k, 0) for k in
                                                                               ("exact_hits", "approx_hits", "batch_hits")),
                "bytes_in": bytes_in, "bytes_out": bytes_out, "aggregates": c.get("store", {}).get("in", 0),
                "reading_bytes": self.reading_bytes, "frame_bytes": self.frame_bytes,
                "dead_lettered": sum(v.get("dead_lettered", 0) for v in c.values())}
        snap["skip_rate"] = snap["reused"] / snap["frames_in"] if snap["frames_in"] else 0.0
        self.samples.append(snap)
        return snap

    def aggregate_bytes(self) -> int:
        """Size of the aggregates as InfluxDB line protocol would carry them (measured from the local store)."""
        path = self.out_dir / "aggregates.db"
        if not path.exists():
            return 0
        try:
            with sqlite3.connect(path) as db:
                rows = db.execute("SELECT measurement, tags, fields FROM points").fetchall()
        except sqlite3.Error:
            return 0
        total = 0
        for m, tags, fields in rows:
            t, f = json.loads(tags), json.loads(fields)
            total += len(m) + sum(len(k) + len(str(v)) + 2 for k, v in t.items()) + \
                sum(len(k) + len(repr(v)) + 2 for k, v in f.items()) + 21
        return total


class LiveDemoView:
    """The live table: rates, skips, cache hits, anomalies per device, bytes in vs out."""

    def __init__(self, stats: DemoStats, title: str, duration: float | None, console: Console | None = None,
                 live: bool = True):
        self.stats, self.title, self.duration = stats, title, duration
        self.console = console or Console(file=sys.stderr)
        self.live = Live(console=self.console, refresh_per_second=4, transient=False) if live else None
        if self.live:
            self.live.start()
        self._last = 0.0

    def update(self, pipeline=None) -> None:
        now = time.monotonic()
        if now - self._last < 0.5:
            return
        self._last = now
        snap = self.stats.sample()
        if self.live:
            self.live.update(self.render(snap))

    def render(self, snap: dict) -> Group:
        prev = self.stats.samples[-2] if len(self.stats.samples) > 1 else {"t": 0.0, "received": 0}
        dt = max(snap["t"] - prev["t"], 1e-6)
        rate = (snap["received"] - prev["received"]) / dt
        left = f" of {self.duration:.0f} s" if self.duration else " (Ctrl-C stops)"
        head = Text(f"{self.title} · {snap['t']:.0f} s{left}", style="bold")
        if self.stats.camera_note and self.stats.camera_note.startswith("GENERATED"):
            head.append(f"\ncameras show {self.stats.camera_note}", style="bold yellow")
        t = Table(show_header=False, box=None, pad_edge=False)
        t.add_column(style="cyan")
        t.add_column(justify="right")
        t.add_column(style="dim")
        t.add_row("messages/s", f"{rate:,.0f}", f"{snap['received']:,} records in ({snap['readings']:,} readings, "
                  f"{snap['frames']:,} frames sent)")
        t.add_row("frames skipped", f"{snap['skip_rate']:.0%}", f"{snap['reused']:,} of {snap['frames_in']:,} by frame_diff")
        t.add_row("cache hit rate", f"{snap['cache_hit_rate']:.0%}", f"{snap['cache_hits']:,} inferences answered by the cache")
        out = snap["bytes_out"]
        ratio = f"{snap['reading_bytes'] / out:,.0f}x less" if out and snap["reading_bytes"] else ""
        t.add_row("readings → out", f"{human_bytes(snap['reading_bytes'])} → {human_bytes(out)}",
                  f"pump readings in, aggregates and alerts out {ratio}".rstrip())
        t.add_row("frames", human_bytes(snap["frame_bytes"]), "camera frames, analysed here, never uploaded")
        t.add_row("aggregates", f"{snap['aggregates']:,}", "10 s windows stored")
        a = Table(title="anomalies per device", title_justify="left", box=None)
        a.add_column("device")
        a.add_column("flagged", justify="right")
        a.add_column("alerts (MQTT)", justify="right")
        a.add_column("true", justify="right")
        with self.stats.lock:
            devices = sorted(set(self.stats.readings) | set(self.stats.flagged) | set(self.stats.alerts))
            for d in devices:
                a.add_row(d, f"{self.stats.flagged[d]:,}", f"{self.stats.alerts[d]:,}", f"{self.stats.truth[d]:,}")
        return Group(head, t, a)

    def close(self) -> None:
        if self.live:
            self.live.stop()
