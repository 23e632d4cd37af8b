"""How edgesieve's internal counters and gauges are named on ``/metrics``, in Prometheus style.

Stages, sources and sinks count with plain names (``ctx.count("filtered", n)``); only this module knows the
Prometheus names, so a new counter needs no change here: it is a count of records unless a rule below says
otherwise. Every metric has the labels ``pipeline`` and ``item`` (the stage, source or sink id).

Counters, one metric per unit:

| internal counter | metric | extra label |
|---|---|---|
| ``in``, ``out``, ``filtered``, ``late``, ``dead_lettered``, ``errors``, ``shed``, ``reused``, ... (records) | ``edgesieve_records_total`` | ``event`` |
| ``bytes_in``, ``bytes_out``, any ``*_bytes`` | ``edgesieve_bytes_total`` | ``event`` |
| ``dead_lettered.<reason>`` | ``edgesieve_dead_letters_total`` | ``reason`` |
| ``checkpoints``, ``checkpoint_rows`` (state entries written) | ``edgesieve_checkpoints_total``, ``edgesieve_checkpoint_rows_total`` | |
| ``cache_<event>`` (hits, misses, audits, ...) | ``edgesieve_cache_events_total`` | ``event`` |
| ``models_*``, ``model_*``, ``drifts`` | ``edgesieve_model_events_total`` | ``event`` |
| ``text_fields_dropped`` | ``edgesieve_fields_dropped_total`` | ``reason="text"`` |
| ``blocked`` (a source waited for the pipeline) | ``edgesieve_source_waits_total`` | |

Gauges:

| internal gauge | metric |
|---|---|
| ``connected`` (MQTT source or sink: 1 connected, 0 not) | ``edgesieve_connected`` |
| ``outbox_backlog_points``, ``outbox_backlog_bytes``, ``outbox_oldest_age_seconds`` | the same, prefixed ``edgesieve_`` |
| ``last_checkpoint_time`` (a unix time) | ``edgesieve_seconds_since_last_checkpoint`` (now minus it) |
| ``open_windows`` (window stages) | ``edgesieve_open_windows`` |
| ``keys`` (series, devices or cameras a stage holds state for) | ``edgesieve_keys_held`` |
| any other ``X`` / ``X_time`` | ``edgesieve_X`` / ``edgesieve_seconds_since_X`` |

>>> counter_metric("filtered"), counter_metric("bytes_in"), counter_metric("dead_lettered.wrong_type")
(('edgesieve_records', 'event', 'filtered'), ('edgesieve_bytes', 'event', 'bytes_in'), ('edgesieve_dead_letters', 'reason', 'wrong_type'))
>>> counter_metric("checkpoints"), gauge_metric("keys"), gauge_metric("last_checkpoint_time")
(('edgesieve_checkpoints', None, None), 'edgesieve_keys_held', 'edgesieve_seconds_since_last_checkpoint')
"""

from __future__ import annotations

import time

_COUNTERS = {
    "checkpoints": ("edgesieve_checkpoints", None, None),
    "checkpoint_rows": ("edgesieve_checkpoint_rows", None, None),
    "blocked": ("edgesieve_source_waits", None, None),
    "text_fields_dropped": ("edgesieve_fields_dropped", "reason", "text"),
    "drifts": ("edgesieve_model_events", "event", "drifts"),
}
_GAUGES = {"keys": "edgesieve_keys_held"}
_HELP = {
    "edgesieve_records": "Records counted per pipeline item and event",
    "edgesieve_bytes": "Payload bytes per pipeline item (bytes_in: received, bytes_out: sent)",
    "edgesieve_dead_letters": "Rejected inputs per item and reason",
    "edgesieve_checkpoints": "Checkpoints written",
    "edgesieve_checkpoint_rows": "State entries written by checkpoints (only what changed)",
    "edgesieve_cache_events": "Result-cache lookups and audits per item",
    "edgesieve_model_events": "Models created, spilled, reloaded or swapped, and drifts detected",
    "edgesieve_fields_dropped": "Fields left out of readings that were kept",
    "edgesieve_source_waits": "Times a source waited because the pipeline was behind",
    "edgesieve_connected": "1 while the item is connected to its broker, else 0",
    "edgesieve_outbox_backlog_points": "Points waiting in the outbox",
    "edgesieve_outbox_backlog_bytes": "Bytes of the points waiting in the outbox",
    "edgesieve_outbox_oldest_age_seconds": "Age of the oldest point waiting in the outbox (event time)",
    "edgesieve_seconds_since_last_checkpoint": "Seconds since the last checkpoint was written",
    "edgesieve_open_windows": "Windows a window stage holds open",
    "edgesieve_keys_held": "Keys (devices, series, cameras) a stage holds state for",
}


def counter_metric(name: str) -> tuple[str, str | None, str | None]:
    """(metric name without ``_total``, extra label name, its value) of an internal counter."""
    if name in _COUNTERS:
        return _COUNTERS[name]
    if name.startswith("dead_lettered."):
        return "edgesieve_dead_letters", "reason", name.split(".", 1)[1]
    if name.startswith("bytes_") or name.endswith("_bytes"):
        return "edgesieve_bytes", "event", name
    if name.startswith("cache_"):
        return "edgesieve_cache_events", "event", name[len("cache_"):]
    if name.startswith(("models_", "model_")):
        return "edgesieve_model_events", "event", name
    return "edgesieve_records", "event", name


def gauge_metric(name: str) -> str:
    """Prometheus name of an internal gauge (``X_time`` gauges are exported as seconds since that time)."""
    if name in _GAUGES:
        return _GAUGES[name]
    if name.endswith("_time"):
        return f"edgesieve_seconds_since_{name[:-len('_time')]}"
    return f"edgesieve_{name}"


class PrometheusCollector:
    """A prometheus-client collector that reads a :class:`pipeline.metrics.Metrics` when scraped."""

    def __init__(self, metrics, clock=time.time):
        self.metrics = metrics
        self.clock = clock

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        from .metrics import LATENCY_BUCKETS

        pipeline = self.metrics.pipeline
        families: dict[str, CounterMetricFamily] = {}
        for (item, name), v in sorted(self.metrics.counters().items()):
            metric, label, value = counter_metric(name)
            fam = families.get(metric)
            if fam is None:
                labels = ["pipeline", "item"] + ([label] if label else [])
                fam = families[metric] = CounterMetricFamily(metric, _HELP.get(metric, metric), labels=labels)
            fam.add_metric([pipeline, item] + ([value] if label else []), v)
        yield from families.values()
        gauges: dict[str, GaugeMetricFamily] = {}
        now = self.clock()
        for (item, name), v in sorted(self.metrics.gauges().items()):
            metric = gauge_metric(name)
            fam = gauges.get(metric)
            if fam is None:
                fam = gauges[metric] = GaugeMetricFamily(metric, _HELP.get(metric, name), labels=["pipeline", "item"])
            fam.add_metric([pipeline, item], max(0.0, now - v) if name.endswith("_time") else v)
        yield from gauges.values()
        hist = HistogramMetricFamily(
            "edgesieve_batch_seconds", "Time a stage or sink spends on one micro-batch", labels=["pipeline", "item"]
        )
        for item, h in sorted(self.metrics.latency().items()):
            cumulative, buckets = 0.0, []
            for bound, c in zip(LATENCY_BUCKETS + (float("inf"),), h[: len(LATENCY_BUCKETS) + 1]):
                cumulative += c
                buckets.append((str(bound) if bound != float("inf") else "+Inf", cumulative))
            hist.add_metric([pipeline, item], buckets, sum_value=h[-2])
        yield hist
