"""The graph runtime: routing, fan-out/fan-in, error policies, overload policies, metrics, logs."""

import json
import urllib.request

import pytest

from pipeline import load_pipeline, registry
from pipeline.errors import PipelineStopped
from tests.support.cli import edgesieve


@pytest.fixture
def test_types(monkeypatch):
    monkeypatch.setitem(registry.STAGES, "boom", "tests.support.stages:Boom")
    monkeypatch.setitem(registry.STAGES, "slow", "tests.support.stages:Slow")
    monkeypatch.setitem(registry.SOURCES, "burst", "tests.support.stages:Burst")


def records(n=10, device="a", start=0):
    return [{"ts": float(start + i), "tags": {"device": device, "kind": "pump" if i % 2 else "fan"}, "fields": {"x": float(i)}}
            for i in range(n)]


def test_fan_out_fan_in_and_tag_routing():
    p = load_pipeline("""
sources: [{id: s, type: replay, path: unused.csv}]
stages:
  - {id: pumps, type: filter, inputs: [s], match: {kind: pump}, where: "x >= 0"}
  - {id: fans, type: map, inputs: [s], match: {kind: [fan]}, set: {y: "x * 10"}}
  - {id: both, type: filter, inputs: [pumps, fans], where: "x < 8"}
sinks:
  - {id: all, type: stdout, inputs: [both]}
  - {id: only_a_fans, type: stdout, inputs: [fans], match: {device: "a*"}}
""")
    out = p.run_records(records(10) + records(4, device="b"))
    assert sorted(r["fields"]["x"] for r in out["all"]) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 5, 6, 7]
    assert all(r["tags"]["kind"] == "fan" and r["tags"]["device"] == "a" for r in out["only_a_fans"])
    assert [r["fields"]["y"] for r in out["only_a_fans"]] == [0.0, 20.0, 40.0, 60.0, 80.0]


POLICY = """
sources: [{{id: s, type: replay, path: unused.csv}}]
stages:
  - {{id: risky, type: boom, inputs: [s], on_error: {policy}}}
sinks: [{{id: out, type: stdout, inputs: [risky]}}]
"""


def test_error_policy_dead_letter_keeps_the_rest(test_types):
    p = load_pipeline(POLICY.format(policy="dead_letter"))
    out = p.run_records(records(10, start=0) + [{"ts": 99.0, "fields": {"x": 500.0}}] + records(5, start=100), batch_size=5)
    # batches of 5: the third one (x=500 and four good records) fails and is dead-lettered whole; the rest go on
    assert len(out["out"]) == 11
    assert len(p.dead_letters.records) == 5
    assert "stage 'risky' (boom) failed in process: RuntimeError: x is too large" in p.dead_letters.records[0]["reason"]
    assert p.metrics.get("risky", "errors") == 5


def test_error_policy_skip_and_stop(test_types):
    p = load_pipeline(POLICY.format(policy="skip"))
    out = p.run_records(records(5) + [{"ts": 9.0, "fields": {"x": 500.0}}], batch_size=3)
    assert len(out["out"]) == 3 and p.dead_letters.records == [] and p.metrics.get("risky", "errors") == 3
    p = load_pipeline(POLICY.format(policy="stop"))
    with pytest.raises(PipelineStopped, match="stage 'risky'"):
        p.run_records([{"ts": 9.0, "fields": {"x": 500.0}}])


@pytest.mark.parametrize("policy", ["block", "shed"])
def test_overload_policy(test_types, tmp_path, policy):
    p = load_pipeline(f"""
sources: [{{id: s, type: burst, batches: 60, size: 10, overload: {policy}, max_queue: 2}}]
stages: [{{id: slow, type: slow, inputs: [s], seconds: 0.01}}]
sinks: [{{id: out, type: file, inputs: [slow], path: {tmp_path}/out.ndjson}}]
runtime: {{batching: {{max_records: 10, max_wait: 0}}, dead_letter: null}}
""")
    summary = p.run()
    written = (tmp_path / "out.ndjson").read_text().count("\n")
    shed = summary.counters["s"].get("shed", 0)
    if policy == "block":
        assert written == 600 and shed == 0 and summary.counters["s"].get("blocked", 0) > 0
    else:
        assert shed > 0 and written + shed == 600


def test_metrics_endpoint_and_json_logs(tmp_path):
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    csv = tmp_path / "r.csv"
    csv.write_text("ts,device,x\n" + "".join(f"{i},d{i % 2},{i if i != 5 else 'bad'}\n" for i in range(50)))
    pipe = tmp_path / "p.yaml"
    pipe.write_text(f"""
sources: [{{id: r, type: replay, path: {csv}, tags: [device], speed: 10}}]
stages: [{{id: w, type: window, inputs: [r], size: 10s, key: [device], aggregates: {{x: [mean]}}}}]
sinks: [{{id: out, type: file, inputs: [w], path: {tmp_path}/o.ndjson}}]
runtime: {{dead_letter: {tmp_path}/dead.ndjson}}
""")
    from tests.support.cli import start_edgesieve
    import time
    proc = start_edgesieve("run", str(pipe), "--metrics-port", str(port), "--log-format", "json")
    body = ""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).read().decode()
            if 'event="dead_lettered",item="r"' in body and "edgesieve_batch_seconds_bucket" in body:
                break
        except OSError:
            pass
        time.sleep(0.2)
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert 'edgesieve_records_total{event="dead_lettered",item="r",pipeline="p"} 1.0' in body
    assert "edgesieve_batch_seconds_bucket" in body
    logs = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    assert any(l["level"] == "warning" and "r.csv:7: field 'x' is 'bad'" in l["message"] for l in logs)
    assert json.loads((tmp_path / "dead.ndjson").read_text())["reason"] == "r.csv:7: field 'x' is 'bad', not a number"


def test_cli_stages_and_schema():
    listing = edgesieve("stages")
    assert listing.returncode == 0
    for name in ("replay", "filter", "map", "window", "file", "stdout"):
        assert f" {name} " in listing.stdout
    schema = json.loads(edgesieve("schema").stdout)
    assert "sources" in schema["properties"] and schema["additionalProperties"] is False


def test_file_sink_truncate_keeps_output_when_resuming(tmp_path):
    from pipeline.sinks.file import FileSink
    from pipeline.batch import Batch
    from pipeline.testing import make_context

    def sink():
        ctx, _ = make_context("out")
        return FileSink(FileSink.Config(id="out", type="file", inputs=["x"], path=str(tmp_path / "o.ndjson"), truncate=True), ctx)

    first = sink()
    first.started(resumed=False)
    first.write(Batch.from_records([{"ts": 1.0, "fields": {"x": 1}}]))
    state = first.snapshot()
    first.write(Batch.from_records([{"ts": 2.0, "fields": {"x": 2}}]))  # after the checkpoint: to be redone
    first.close()
    second = sink()
    second.started(resumed=True)
    second.restore(state)
    second.close()
    assert (tmp_path / "o.ndjson").read_text() == '{"ts":1.0,"tags":{},"fields":{"x":1.0}}\n'
    third = sink()
    third.started(resumed=False)  # a fresh start empties it
    third.close()
    assert (tmp_path / "o.ndjson").read_text() == ""


def test_a_source_that_fails_at_once_is_an_error_not_a_clean_end(tmp_path):
    p = load_pipeline(f"""
sources:
  - {{id: a, type: replay, path: {tmp_path}/missing-a.csv}}
  - {{id: b, type: replay, path: {tmp_path}/missing-b.csv}}
sinks: [{{id: out, type: stdout, inputs: [a, b]}}]
runtime: {{dead_letter: null}}
""")
    summary = p.run()
    assert summary.stopped_by == "error" and "missing-" in summary.error and "does not exist" in summary.error


def test_rows_of_a_source_are_stamped_with_their_arrival_when_the_source_hands_them_on(monkeypatch, tmp_path):
    """A source that does not stamp arrival (all but mqtt) gets the pipeline clock when it emits, not when a stage
    sees the rows: here the pipeline thread's clock is a day ahead of the source thread's."""
    import threading

    from pipeline.loader import parse_pipeline
    from pipeline.runtime import Pipeline

    monkeypatch.setitem(registry.SOURCES, "list", "pipeline.testing:ListSource")
    now = 1_767_225_600.0
    recs = [{"ts": now - 5, "tags": {"device": "a"}, "fields": {"x": 1.0}},
            {"ts": now + 1000, "tags": {"device": "a"}, "fields": {"x": 2.0}}]
    spec = parse_pipeline(json.dumps({
        "sources": [{"id": "s", "type": "list", "records": recs}],
        "stages": [{"id": "win", "type": "window", "inputs": ["s"], "size": "10s", "max_future": "300s",
                    "aggregates": {"x": ["sum"]}}],
        "sinks": [{"id": "out", "type": "file", "inputs": ["win"], "path": str(tmp_path / "out.ndjson")}],
        "runtime": {"dead_letter": None}}))
    clock = lambda: now if threading.current_thread().name.startswith("source:") else now + 86_400.0  # noqa: E731
    summary = Pipeline(spec, clock=clock).run()
    assert summary.counters["win"].get("future_timestamp") == 1
    assert [json.loads(line)["fields"] for line in (tmp_path / "out.ndjson").read_text().splitlines()] == [
        {"count": 1, "x_sum": 1.0}]
