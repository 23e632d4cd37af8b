"""`edgesieve validate`: every error at once, each with file:line:column, the item and what to do."""

from pathlib import Path

import pytest

from pipeline import ConfigError, load_pipeline
from pipeline.loader import parse_pipeline
from tests.support.cli import edgesieve

GOOD = """\
pipeline: plant
sources:
  - {id: readings, type: replay, path: data/readings.csv, tags: [site, device]}
stages:
  - id: per_device
    type: window
    inputs: [readings]
    size: 10s
    key: [site, device]
    aggregates: {temperature: [mean, min, max], pressure: [p95]}
sinks:
  - {id: out, type: file, inputs: [per_device], path: out/aggregates.ndjson}
"""


def problems(text, env=None):
    with pytest.raises(ConfigError) as info:
        parse_pipeline(text, env=env or {})
    return info.value.problems


def test_good_file_is_valid():
    spec = parse_pipeline(GOOD, env={})
    assert [s.id for s in spec.stages] == ["per_device"]
    assert spec.stages[0].size == 10.0


def test_every_error_is_reported_at_once_with_positions():
    bad = """\
pipeline: plant
sources:
  - {id: readings, type: replay, path: x.csv}
  - {id: readings, type: replay, path: y.csv}
stages:
  - id: w
    type: windw
    inputs: [readings]
  - id: f
    type: filter
    inputs: [readngs]
    where: "t > 1"
    colour: blue
  - id: w2
    type: window
    inputs: [readings]
    size: ten seconds
    aggregates: {t: [mean, median]}
sinks:
  - {id: out, type: file, inputs: [f, w2], path: o.ndjson}
"""
    found = problems(bad)
    text = "\n".join(str(p) for p in found)
    assert "<text>:4:" in text and "id 'readings' is already used at line 3" in text
    assert "<text>:7:11: stage 'w' (windw): unknown stage type 'windw' — did you mean 'window'?" in text
    assert "<text>:11:14: stage 'f' (filter): input 'readngs' is not a source or stage — did you mean 'readings'?" in text
    assert "<text>:13:13: stage 'f' (filter): unknown key 'colour'" in text
    assert "<text>:17:11: stage 'w2' (window): field 'size': invalid duration 'ten seconds'" in text
    assert "stage 'w2' (window): field 'aggregates.t.1'" in text and "median" in text
    assert "<text>:6:9: stage 'w' (windw): its output goes nowhere" in text
    assert len(found) == 7


def test_cycle_and_dangling_stage():
    text = "\n".join(map(str, problems("""\
sources: [{id: s, type: replay, path: x.csv}]
stages:
  - {id: a, type: filter, inputs: [s, b], where: "x > 1"}
  - {id: b, type: filter, inputs: [a], where: "x > 2"}
  - {id: c, type: filter, inputs: [s], where: "x > 3"}
sinks: [{id: out, type: stdout, inputs: [a]}]
""")))
    assert "stage 'a' (filter): is part of a cycle (a -> b)" in text
    assert "stage 'c' (filter): its output goes nowhere" in text


def test_sink_fed_by_nothing_and_unsafe_expression():
    text = "\n".join(map(str, problems("""\
sources: [{id: s, type: replay, path: x.csv}]
stages:
  - {id: f, type: filter, inputs: [s], where: "__import__('os').system('true')"}
sinks: [{id: out, type: stdout, inputs: []}, {id: out2, type: stdout, inputs: [f]}]
""")))
    assert "function \"__import__('os').system\" is not allowed" in text
    assert "sink 'out' (stdout): field 'inputs'" in text


def test_environment_substitution_and_missing_variable():
    spec = parse_pipeline(GOOD.replace("out/aggregates.ndjson", "'${OUT_DIR:-out}/${NAME}.ndjson'"), env={"NAME": "agg"})
    assert spec.sinks[0].path == "out/agg.ndjson"
    found = problems(GOOD.replace("out/aggregates.ndjson", "'${NOPE}/a.ndjson'"))
    assert str(found[0]).startswith("<text>:12:") and "environment variable NOPE is not set" in str(found[0])


def test_invalid_yaml_names_the_line():
    found = problems("sources: [\n  {id: a\n")
    assert "not valid YAML" in str(found[0]) and str(found[0]).startswith("<text>:2:")   # the unclosed {
    assert "not closed" in str(found[0])


def test_cli_validate_exit_codes(tmp_path: Path):
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "readings.csv").write_text("ts,site,device,temperature\n")  # validate checks input files
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("size: 10s", "size: -3s").replace("type: file", "type: fiel"))
    ok = edgesieve("validate", str(good))
    assert ok.returncode == 0 and "pipeline 'plant' is valid" in ok.stdout and "per_device (window) <- readings" in ok.stdout
    no = edgesieve("validate", str(bad))
    assert no.returncode == 1
    assert f"{bad}:8:11: stage 'per_device' (window): field 'size'" in no.stderr
    assert f"{bad}:12:21: sink 'out' (fiel): unknown sink type 'fiel' — did you mean 'file'?" in no.stderr
    assert "2 problems" in no.stderr


def test_run_records_api():
    p = load_pipeline(GOOD)
    out = p.run_records([{"ts": 100.0 + i, "tags": {"site": "s", "device": "d"}, "fields": {"temperature": float(i), "pressure": 1.0}}
                         for i in range(20)])
    assert [r["fields"]["temperature_mean"] for r in out["out"]] == [4.5, 14.5]
    with pytest.raises(ValueError, match="no source 'nope'"):
        p.run_records([], source="nope")


def test_a_secret_value_is_never_echoed_in_errors():
    from pydantic import Field, SecretStr
    from typing import Literal
    from pipeline.config import SinkConfig
    import pipeline.sinks.stdout as stdout_mod

    class SecretSinkConfig(SinkConfig):
        type: Literal["stdout"]
        token: SecretStr = Field(description="a secret")
        retries: int = Field(1, description="not a secret")

    original = stdout_mod.StdoutSink.Config
    stdout_mod.StdoutSink.Config = SecretSinkConfig
    try:
        text = GOOD.replace("type: file, inputs: [per_device], path: out/aggregates.ndjson",
                            "type: stdout, inputs: [per_device], token: [hunter2-s3cret], retries: many")
        found = "\n".join(map(str, problems(text)))
        assert "field 'token'" in found and "hunter2" not in found
        assert "(got 'many')" in found
        ok = GOOD.replace("type: file, inputs: [per_device], path: out/aggregates.ndjson",
                          "type: stdout, inputs: [per_device], token: hunter2-s3cret")
        spec = parse_pipeline(ok, env={})
        assert "hunter2" not in repr(spec.sinks[0]) and "hunter2" not in spec.sinks[0].model_dump_json()
    finally:
        stdout_mod.StdoutSink.Config = original


def test_validate_builds_stages_so_a_missing_model_is_caught(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("""\
sources: [{id: s, type: replay, path: x.csv}]
stages:
  - {id: count, type: onnx, inputs: [s], model: nope/model.onnx, feeds: {window: {source: window, fields: [a], length: 4}}}
sinks: [{id: o, type: stdout, inputs: [count]}]
""")
    result = edgesieve("validate", str(bad))
    assert result.returncode == 1
    assert f"{bad}:3:5: stage 'count' (onnx): cannot start:" in result.stderr and "nope/model.onnx" in result.stderr


MERGED = """\
pipeline: plant
x-window: &window {type: window, size: 10s, key: [site, device], aggregates: {temperature: [mean]}}
sources:
  - {id: readings, type: replay, path: data/readings.csv, tags: [site, device]}
stages:
  - <<: *window
    id: per_device
    inputs: [readings]
  - {<<: *window, id: slow, inputs: [readings], size: 1m}
sinks:
  - {id: out, type: file, inputs: [per_device, slow], path: out/aggregates.ndjson}
"""


def test_merge_keys_and_an_x_anchor_holder_read_as_yaml_safe_load_reads_them():
    spec = parse_pipeline(MERGED, env={})
    assert [(s.id, s.type, s.size, s.key) for s in spec.stages] == [
        ("per_device", "window", 10.0, ["site", "device"]), ("slow", "window", 60.0, ["site", "device"])]


@pytest.mark.parametrize("text,line,what", [
    (GOOD.replace("path: data/readings.csv", "path: !secret readings"), 3, "not valid YAML"),
    (GOOD.replace("    size: 10s\n", "    size: 10s\n    [a]: 1\n"), 9, "a list is not a key"),
    (GOOD.replace("    size: 10s\n", "    <<: [1, 2]\n"), 8, "not valid YAML")])
def test_tags_list_keys_and_bad_merges_are_problems_at_their_line_not_tracebacks(text, line, what):
    """Before, each raised a Python exception out of `edgesieve validate` (and stopped a `run --watch` on reload)."""
    (p,) = problems(text)
    assert p.line == line and what in p.message, str(p)


def test_a_reload_of_a_file_the_loader_cannot_read_is_refused_and_the_pipeline_goes_on(tmp_path):
    from pipeline.reload import reload_graph
    from pipeline.runtime import Pipeline
    f = tmp_path / "p.yaml"
    f.write_text(GOOD)
    p = Pipeline(parse_pipeline(f, env={}))
    f.write_text(GOOD.replace("path: data/readings.csv", "path: !secret readings"))
    assert reload_graph(p, f) is None
    f.write_text(MERGED)
    graph = reload_graph(p, f)
    assert graph is not None and set(graph.stages) == {"per_device", "slow"}


def test_an_anchor_that_merges_and_overrides_reads_the_same_at_each_use():
    """The anchor's node was flattened in place at its first use, and its merged key counted as written twice."""
    text = GOOD.replace("pipeline: plant\n", "pipeline: plant\nx-base: &base {temperature: [mean]}\n"
                        "x-aggs: &aggs\n  <<: *base\n  temperature: [max]\n").replace(
        "aggregates: {temperature: [mean, min, max], pressure: [p95]}", "aggregates: *aggs")
    assert parse_pipeline(text, env={}).stages[0].aggregates == {"temperature": ["max"]}


def test_windows_of_two_sizes_into_one_keyed_sink_are_refused_by_validate(tmp_path):
    """At the starts they share, the 1-minute point replaced the 10-second one in the store (12 rows for 14, no
    warning; found in review). Windows with other keys, or a sink that keeps every record, are fine."""
    text = GOOD.replace("stages:\n", "stages:\n  - {id: slow, type: window, inputs: [readings], size: 1m, "
                        "key: [site, device], aggregates: {temperature: [mean]}}\n  - {id: by_site, type: window, "
                        "inputs: [readings], size: 1m, key: [site], aggregates: {temperature: [mean]}}\n  - {id: hot, "
                        "type: filter, inputs: [slow], where: 'temperature_mean > 30'}\n").replace(
        "  - {id: out, type: file, inputs: [per_device], path: out/aggregates.ndjson}",
        "  - {id: out, type: file, inputs: [per_device, slow], path: out/aggregates.ndjson}\n"
        "  - {id: db, type: sqlite, inputs: [per_device, hot, by_site], path: out/a.db}")
    from pipeline.lint import window_collision_problems
    (problem,) = window_collision_problems(parse_pipeline(text, env={}))
    assert ":16:5: sink 'db' (sqlite): windows 'per_device' (10s), 'slow' (60s)" in problem, problem
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "readings.csv").write_text("ts,site,device,temperature,pressure\n1,s,d,20,1\n")
    (tmp_path / "p.yaml").write_text(text)
    r = edgesieve("validate", str(tmp_path / "p.yaml"))
    assert r.returncode == 1 and "would lose aggregates" in r.stderr and "sink 'db'" in r.stderr
