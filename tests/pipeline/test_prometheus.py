"""/metrics in Prometheus style: one counter per unit, gauges read at scrape time, and the dashboard's queries."""

import json
import re
from pathlib import Path

import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from pipeline.batch import Batch
from pipeline.loader import parse_pipeline
from pipeline.metrics import Metrics, PrometheusCollector
from pipeline.runtime import Pipeline

ROOT = Path(__file__).resolve().parents[2]


def scrape(metrics, clock=None):
    registry = CollectorRegistry()
    registry.register(PrometheusCollector(metrics, **({"clock": clock} if clock else {})))
    text = generate_latest(registry).decode()
    samples = [(s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples]
    return text, samples


def test_counters_are_split_by_unit_and_new_counters_still_appear():
    m = Metrics("p")
    for name, n in [("in", 10), ("bytes_in", 1234), ("checkpoints", 2), ("cache_exact_hits", 3),
                    ("dead_lettered.wrong_type", 1), ("text_fields_dropped", 4), ("brand_new_thing", 7)]:
        m.count("x" if name != "checkpoints" else "runtime", name, n)
    text, samples = scrape(m)
    got = {(name, tuple(sorted(labels.items()))): v for name, labels, v in samples}
    assert got[("edgesieve_records_total", (("event", "in"), ("item", "x"), ("pipeline", "p")))] == 10
    assert got[("edgesieve_bytes_total", (("event", "bytes_in"), ("item", "x"), ("pipeline", "p")))] == 1234
    assert got[("edgesieve_checkpoints_total", (("item", "runtime"), ("pipeline", "p")))] == 2
    assert got[("edgesieve_cache_events_total", (("event", "exact_hits"), ("item", "x"), ("pipeline", "p")))] == 3
    assert got[("edgesieve_dead_letters_total", (("item", "x"), ("pipeline", "p"), ("reason", "wrong_type")))] == 1
    assert got[("edgesieve_fields_dropped_total", (("item", "x"), ("pipeline", "p"), ("reason", "text")))] == 4
    assert got[("edgesieve_records_total", (("event", "brand_new_thing"), ("item", "x"), ("pipeline", "p")))] == 7
    records_events = {labels["event"] for name, labels, _ in samples if name == "edgesieve_records_total"}
    assert records_events == {"in", "brand_new_thing"}                     # no bytes or checkpoints among records
    counters = [f for f in text_string_to_metric_families(text) if f.type == "counter"]
    assert len(counters) == 6 and all(s.name.endswith("_total") for f in counters for s in f.samples)


def test_gauges_open_windows_keys_and_checkpoint_age():
    spec = parse_pipeline(yaml.safe_dump({
        "pipeline": "g", "sources": [{"id": "in", "type": "replay", "path": "x.csv", "tags": ["device"]}],
        "stages": [{"id": "w", "type": "window", "inputs": ["in"], "size": "10s", "key": ["device"],
                    "aggregates": {"t": ["mean"]}}],
        "sinks": [{"id": "out", "type": "stdout", "inputs": ["w"]}]}))
    p = Pipeline(spec)
    p.graph.deliver = lambda *a: None
    recs = [{"ts": 1000.0 + i, "tags": {"device": f"d{i % 3}"}, "fields": {"t": float(i)}} for i in range(25)]
    p.graph.push("in", Batch.from_records(recs))              # 1000..1024: windows 1020 (d0, d1, d2) stay open
    p.metrics.set_gauge("runtime", "last_checkpoint_time", 500.0)
    _, samples = scrape(p.metrics, clock=lambda: 512.5)
    got = {(name, labels.get("item")): v for name, labels, v in samples}
    assert got[("edgesieve_open_windows", "w")] == 3 and got[("edgesieve_keys_held", "w")] == 3
    assert got[("edgesieve_seconds_since_last_checkpoint", "runtime")] == 12.5


def _dashboard_metrics():
    dash = json.loads((ROOT / "compose" / "grafana" / "dashboards" / "edgesieve.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"] if "expr" in t]
    return exprs, {m for e in exprs for m in re.findall(r"\b(edgesieve_\w+)", e)}


def test_dashboard_has_backlog_dead_letter_and_connection_panels():
    dash = json.loads((ROOT / "compose" / "grafana" / "dashboards" / "edgesieve.json").read_text())
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for word in ("backlog", "dead letters", "connection"):
        assert word in titles, word
    _, names = _dashboard_metrics()
    assert {"edgesieve_outbox_backlog_points", "edgesieve_outbox_backlog_bytes", "edgesieve_outbox_oldest_age_seconds",
            "edgesieve_dead_letters_total", "edgesieve_connected", "edgesieve_seconds_since_last_checkpoint"} <= names
