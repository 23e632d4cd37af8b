"""Per-item counters, gauges and batch-latency histograms, exposed to Prometheus at scrape time.

Counting is a dict update on the pipeline thread (cheap); prometheus-client only reads them when scraped.
Gauges are values set now and then (``set_gauge``) or read at scrape time from the item that holds them
(``gauge_source``: a function returning ``{name: value}``, e.g. a window stage's open windows).
How internal names become Prometheus metric names is in :mod:`pipeline.prometheus`.

>>> m = Metrics("demo")
>>> m.count("per_device", "in", 10); m.count("per_device", "in", 5)
>>> m.get("per_device", "in")
15
>>> m.gauge_source("per_device", lambda: {"open_windows": 3})
>>> m.set_gauge("devices", "connected", 1)
>>> sorted(m.gauges().items())
[(('devices', 'connected'), 1.0), (('per_device', 'open_windows'), 3.0)]
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from typing import Callable

LATENCY_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)


class Metrics:
    def __init__(self, pipeline: str):
        self.pipeline = pipeline
        self._counters: dict[tuple[str, str], int] = defaultdict(int)
        self._latency: dict[str, list[float]] = {}  # item -> bucket counts + [sum, count]
        self._gauges: dict[tuple[str, str], float] = {}
        self._gauge_sources: dict[str, Callable[[], dict[str, float]]] = {}
        self._lock = threading.Lock()

    def count(self, item: str, name: str, n: int = 1) -> None:
        if n:
            with self._lock:
                self._counters[(item, name)] += int(n)

    def get(self, item: str, name: str) -> int:
        return self._counters.get((item, name), 0)

    def set_gauge(self, item: str, name: str, value: float) -> None:
        self._gauges[(item, name)] = float(value)

    def gauge_source(self, item: str, read: Callable[[], dict[str, float]]) -> None:
        """``read()`` is called at scrape time (on the scraping thread) for the item's current gauges."""
        self._gauge_sources[item] = read

    def drop_gauge_source(self, item: str) -> None:
        self._gauge_sources.pop(item, None)

    def gauges(self) -> dict[tuple[str, str], float]:
        out = dict(self._gauges)
        for item, read in list(self._gauge_sources.items()):
            try:
                values = read() or {}
            except Exception:  # noqa: BLE001 - a gauge read racing the pipeline thread: skip it this scrape
                continue
            out.update(((item, k), float(v)) for k, v in values.items() if v is not None)
        return out

    def observe_latency(self, item: str, seconds: float) -> None:
        with self._lock:
            h = self._latency.get(item)
            if h is None:
                h = self._latency[item] = [0.0] * (len(LATENCY_BUCKETS) + 3)
            h[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
            h[-2] += seconds
            h[-1] += 1

    def counters(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._counters)

    def by_item(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = defaultdict(dict)
        for (item, name), v in self.counters().items():
            out[item][name] = v
        return dict(out)

    def latency(self) -> dict[str, list[float]]:
        with self._lock:
            return {k: list(v) for k, v in self._latency.items()}


from .prometheus import PrometheusCollector  # noqa: E402 - re-exported: the collector reads a Metrics


def serve_prometheus(metrics: Metrics, port: int, addr: str = "127.0.0.1", spec=None):
    """Start the /metrics HTTP endpoint on its own thread; returns the server (call ``shutdown()`` to stop)."""
    from prometheus_client import start_http_server
    from prometheus_client.registry import CollectorRegistry

    registry = CollectorRegistry()
    registry.register(PrometheusCollector(metrics))
    if spec is not None:
        from .bandwidth import BandwidthCollector

        registry.register(BandwidthCollector(metrics, spec))
    server, _thread = start_http_server(port, addr=addr, registry=registry)
    return server
