"""Smaller findings: `fsync: off` as written, the final checkpoint after the last flush, drops and dead letters in
the run summary, and the sink refusing an outbox that is behind the checkpoint."""
from __future__ import annotations

import io

import pytest
from rich.console import Console

from connectors.influx.integrity import OutboxDamaged
from pipeline import load_pipeline
from pipeline.progress import print_summary
from tests.connectors.influx.test_influxdb_sink import TOKEN, pipeline_yaml, write_csv


@pytest.mark.parametrize("sink", ["influxdb", "sqlite"])
def test_fsync_off_unquoted_is_the_word_off(tmp_path, sink):
    extra = "url: http://localhost:8086, org: o, bucket: b" if sink == "influxdb" else f"path: {tmp_path / 'a.db'}"
    spec = load_pipeline(f"""
sources: [{{id: r, type: replay, path: x.csv}}]
sinks: [{{id: s, type: {sink}, inputs: [r], fsync: off, {extra}}}]
""").spec
    assert spec.sinks[0].fsync == "off"


def test_restarting_a_finished_replay_sends_nothing_again(tmp_path, victoria_shared, measurement, monkeypatch):
    monkeypatch.setenv("INFLUX_TOKEN", TOKEN)
    write_csv(tmp_path / "r.csv", devices=2, seconds=120)
    yaml = pipeline_yaml(tmp_path / "r.csv", victoria_shared.url, measurement, tmp_path, chunk=100,
                         checkpoint=f"checkpoint: {{path: {tmp_path / 'cp.pickle'}, interval: 0.02}}")
    first = load_pipeline(yaml).run()
    assert first.error is None and first.counters["cloud"]["outbox_sent"] == 24
    match = f'{{__name__="{measurement}_t_mean"}}'
    landed = victoria_shared.count(match)
    for restart in range(2):                     # each restart checkpoints again: the outbox forgets old deliveries
        again = load_pipeline(yaml).run()
        assert again.error is None and again.counters.get("cloud", {}).get("outbox_sent", 0) == 0, restart
    assert victoria_shared.count(match) == landed == 24


def test_drops_and_dead_letters_are_in_the_run_summary(tmp_path, http_stub, monkeypatch):
    monkeypatch.setenv("INFLUX_TOKEN", TOKEN)
    http_stub.default = (503, {}, "down")
    write_csv(tmp_path / "r.csv", devices=3, seconds=600)
    yaml = pipeline_yaml(tmp_path / "r.csv", http_stub.url, measurement="m", tmp_path=tmp_path,
                         sink_extra="drain_timeout: 0\n    max_outbox_bytes: 4096\n    coarsen_steps: [60]")
    summary = load_pipeline(yaml).run()
    c = summary.counters["cloud"]
    assert c["outbox_dropped"] > 0 and c["outbox_coarsened_in"] > 0
    out = io.StringIO()
    print_summary(summary, Console(file=out, width=200))
    text = out.getvalue()
    assert f"{c['outbox_dropped']:,} points dropped by the outbox's disk bound" in text
    assert f"{c['outbox_coarsened_in']:,} points merged into coarser windows" in text


def test_the_sink_refuses_an_outbox_behind_the_checkpoint(tmp_path, http_stub):
    from connectors.influx.influxdb import InfluxdbConfig, InfluxdbSink
    from pipeline.testing import make_context

    cfg = InfluxdbConfig(id="cloud", type="influxdb", inputs=["w"], url=http_stub.url, org="o", bucket="b",
                         token=TOKEN, outbox=str(tmp_path / "o.db"))
    sink = InfluxdbSink(cfg, make_context("cloud")[0])
    try:
        state = sink.snapshot()
        assert state == {"outbox_generation": 1, "outbox_put": 0, "outbox_sent": 0, "outbox_pending": 0}
        sink.restore(state)                                   # as recorded: fine
        with pytest.raises(OutboxDamaged, match=r"sink 'cloud' is behind the pipeline's checkpoint"):
            sink.restore({**state, "outbox_generation": 7, "outbox_put": 500, "outbox_pending": 120})
    finally:
        sink.close()
