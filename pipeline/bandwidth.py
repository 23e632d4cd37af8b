"""Bandwidth accounting: bytes received from devices vs bytes sent to the cloud, per pipeline.

Sources count what they receive as ``bytes_in`` and sinks what they send as ``bytes_out``, through the
ordinary per-item counters (``ctx.count("bytes_in", n)``); this module adds them up. Only sinks that leave
the site (the types in ``pipeline.registry.CLOUD_SINKS``) count as "out"; a local file or sqlite sink does not.

>>> counters = {"readings": {"bytes_in": 1_200_000}, "cloud": {"bytes_out": 4_000}, "file": {"bytes_out": 90_000}}
>>> b = Bandwidth.from_counters(counters, cloud_sinks=["cloud"])
>>> b.bytes_in, b.bytes_out, b.reduction
(1200000, 4000, 300.0)
>>> str(b)
'1.2 MB in from devices, 4.0 kB out to the cloud (300x less)'
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from .registry import CLOUD_SINKS


def human_bytes(n: float) -> str:
    """``1234567`` -> ``'1.2 MB'`` (decimal units)."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


@dataclass(frozen=True)
class Bandwidth:
    bytes_in: int
    bytes_out: int

    @property
    def reduction(self) -> float | None:
        """How many times fewer bytes left the site than came in (None when nothing went out)."""
        return self.bytes_in / self.bytes_out if self.bytes_out else None

    @classmethod
    def from_counters(cls, counters: Mapping[str, Mapping[str, int]], cloud_sinks: Iterable[str]) -> "Bandwidth":
        """From ``Metrics.by_item()`` (or a run summary's ``counters``) and the ids of the cloud sinks."""
        cloud = set(cloud_sinks)
        return cls(sum(c.get("bytes_in", 0) for c in counters.values()),
                   sum(c.get("bytes_out", 0) for item, c in counters.items() if item in cloud))

    @classmethod
    def of_pipeline(cls, spec, counters: Mapping[str, Mapping[str, int]]) -> "Bandwidth":
        """For a validated pipeline (``PipelineSpec``): cloud sinks are those whose type is in ``CLOUD_SINKS``."""
        return cls.from_counters(counters, [s.id for s in spec.sinks if s.type in CLOUD_SINKS])

    def __str__(self) -> str:
        r = self.reduction
        tail = f" ({r:.0f}x less)" if r is not None and r >= 1 else ""
        return f"{human_bytes(self.bytes_in)} in from devices, {human_bytes(self.bytes_out)} out to the cloud{tail}"


class BandwidthCollector:
    """prometheus-client collector: ``edgesieve_bytes_in_total`` / ``edgesieve_bytes_out_total`` per pipeline."""

    def __init__(self, metrics, spec):
        self.metrics, self.spec = metrics, spec

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        b = Bandwidth.of_pipeline(self.spec, self.metrics.by_item())
        for name, value, doc in (("edgesieve_bytes_in", b.bytes_in, "Bytes received from devices"),
                                 ("edgesieve_bytes_out", b.bytes_out, "Bytes sent to the cloud")):
            fam = CounterMetricFamily(name, doc, labels=["pipeline"])
            fam.add_metric([self.metrics.pipeline], value)
            yield fam
