"""Per-item counters and batch-latency histograms, exposed to Prometheus at scrape time.

Counting is a dict update on the pipeline thread (cheap); prometheus-client only reads them when scraped.

>>> m = Metrics("demo")
>>> m.count("per_device", "in", 10); m.count("per_device", "in", 5)
>>> m.get("per_device", "in")
15
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)


class Metrics:
    def __init__(self, pipeline: str):
        self.pipeline = pipeline
        self._counters: dict[tuple[str, str], int] = defaultdict(int)
        self._latency: dict[str, list[float]] = {}  # item -> bucket counts + [sum, count]
        self._lock = threading.Lock()

    def count(self, item: str, name: str, n: int = 1) -> None:
        if n:
            with self._lock:
                self._counters[(item, name)] += int(n)

    def get(self, item: str, name: str) -> int:
        return self._counters.get((item, name), 0)

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


class PrometheusCollector:
    """A prometheus-client collector that reads a :class:`Metrics` when scraped."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        records = CounterMetricFamily(
            "edgesieve_records", "Records counted per pipeline item and event", labels=["pipeline", "item", "event"]
        )
        for (item, name), v in sorted(self.metrics.counters().items()):
            records.add_metric([self.metrics.pipeline, item, name], v)
        yield records
        hist = HistogramMetricFamily(
            "edgesieve_batch_seconds", "Time a stage or sink spends on one micro-batch", labels=["pipeline", "item"]
        )
        for item, h in sorted(self.metrics.latency().items()):
            cumulative, buckets = 0.0, []
            for bound, c in zip(LATENCY_BUCKETS + (float("inf"),), h[: len(LATENCY_BUCKETS) + 1]):
                cumulative += c
                buckets.append((str(bound) if bound != float("inf") else "+Inf", cumulative))
            hist.add_metric([self.metrics.pipeline, item], buckets, sum_value=h[-2])
        yield hist


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
