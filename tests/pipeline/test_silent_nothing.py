"""No silent nothing: names no record has are warned about once, counted, and `validate` flags unquoted words."""

import logging

import numpy as np
import yaml

from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from pipeline.batch import Batch
from pipeline.loader import parse_pipeline
from pipeline.metrics import PrometheusCollector
from pipeline.runtime import Pipeline
from tests.support.cli import edgesieve

RECORDS = [{"ts": 1000.0 + i, "tags": {"device": f"pump{i % 2}"}, "fields": {"temperature": 20.0 + i}} for i in range(10)]


def pipeline(stages, sinks=None):
    sinks = sinks or [{"id": "out", "type": "stdout", "inputs": [stages[-1]["id"]]}]
    return Pipeline(parse_pipeline(yaml.safe_dump({
        "pipeline": "p", "sources": [{"id": "in", "type": "replay", "path": "x.csv", "tags": ["device"]}],
        "stages": stages, "sinks": sinks}, sort_keys=False)))


def test_misspelled_field_warns_once_with_did_you_mean_and_is_counted(caplog):
    p = pipeline([{"id": "hot", "type": "filter", "inputs": ["in"], "where": "devce == 'pump1' or temprature > 25"}])
    with caplog.at_level(logging.WARNING, "edgesieve"):
        out = p.run_records(RECORDS, batch_size=3)["out"]
    assert out == []
    warned = [r.getMessage() for r in caplog.records if "no record has" in r.getMessage()]
    assert len(warned) == 2, warned                                  # once per name, not once per batch
    assert "'devce'" in warned[0] and "did you mean 'device'?" in warned[0]
    assert "'temprature'" in warned[1] and "did you mean 'temperature'?" in warned[1]
    assert p.metrics.get("hot", "records_missing_name") == 2 * len(RECORDS)
    registry = CollectorRegistry()
    registry.register(PrometheusCollector(p.metrics))
    assert "records_missing_name" in generate_latest(registry).decode()


def test_names_that_are_present_do_not_warn(caplog):
    p = pipeline([{"id": "m", "type": "map", "inputs": ["in"], "set": {"f": "temperature * 9 / 5 + 32", "g": "f + 1"},
                   "rename": {"g": "h"}}])
    with caplog.at_level(logging.WARNING, "edgesieve"):
        out = p.run_records(RECORDS)["out"]
    assert len(out) == 10 and "no record has" not in caplog.text and p.metrics.get("m", "records_missing_name") == 0


def test_unquoted_word_compared_with_a_tag_gets_the_quoted_hint_at_run_time(caplog):
    p = pipeline([{"id": "one", "type": "filter", "inputs": ["in"], "where": "device == pump1"}])
    with caplog.at_level(logging.WARNING, "edgesieve"):
        assert p.run_records(RECORDS)["out"] == []
    assert "write device == 'pump1'" in caplog.text


def test_match_on_an_annotation_works_and_on_a_missing_key_warns(caplog):
    p = pipeline([{"id": "pass", "type": "map", "inputs": ["in"], "set": {}}],
                 sinks=[{"id": "ends", "type": "stdout", "inputs": ["pass"], "match": {"event": "anomaly_end"}},
                        {"id": "typo", "type": "stdout", "inputs": ["pass"], "match": {"devise": "pump1"}},
                        {"id": "field", "type": "stdout", "inputs": ["pass"], "match": {"temperature": "20"}}])
    got = {}
    p.graph.deliver = lambda sink, batch: got.setdefault(sink, []).append(batch)
    batch = Batch.from_records(RECORDS).with_extra(event=np.array([None, "anomaly_end"] * 5, dtype=object))
    with caplog.at_level(logging.WARNING, "edgesieve"):
        p.graph.push("in", batch)
        p.graph.push("in", batch)
    assert sum(len(b) for b in got["ends"]) == 10 and "typo" not in got
    warned = [r.getMessage() for r in caplog.records if "match:" in r.getMessage()]
    assert len(warned) == 2
    assert "'typo'" in warned[0] and "'devise'" in warned[0] and "did you mean 'device'?" in warned[0]
    assert "'temperature' is a field" in warned[1]
    assert p.metrics.get("typo", "records_missing_name") == 20


def test_validate_flags_an_unquoted_word_compared_with_a_tag(tmp_path):
    (tmp_path / "x.csv").write_text("ts,site,temperature\n1,north,1.0\n")
    f = tmp_path / "p.yaml"
    f.write_text("""\
pipeline: p
sources:
  - {id: in, type: replay, path: x.csv, tags: [site]}
  - id: mq
    type: mqtt
    subscriptions: [{topic_template: "sensors/{device}"}]
stages:
  - {id: one, type: filter, inputs: [in, mq], where: "device == pump1 and site in [north, 'south']"}
  - {id: ok, type: filter, inputs: [one], where: "device == 'pump1' and temperature > limit"}
sinks:
  - {id: out, type: stdout, inputs: [ok]}
""")
    r = edgesieve("validate", str(f))
    assert r.returncode == 1
    lines = [line.strip() for line in r.stderr.splitlines() if "has no quotes" in line]
    assert len(lines) == 2, r.stderr
    assert lines[0].startswith(f"{f}:8:") and "(hint: device == 'pump1')" in lines[0]
    assert "(hint: site in ['north', 'south'])" in lines[1]
