"""The influxdb and sqlite sinks inside real pipelines: replay → window → sink, against a real VictoriaMetrics."""
from __future__ import annotations

import logging
import sqlite3
import time

import numpy as np
import pytest

from pipeline.bandwidth import Bandwidth
from connectors.influx.sender import CloudRejected
from pipeline import load_pipeline
from pipeline.errors import ConfigError

TOKEN = "edge-T0KEN-do-not-leak-42"


def write_csv(path, devices=3, seconds=60, hz=10, seed=3):
    """Readings from ``now - 2 h`` (so VictoriaMetrics exports them) at ``hz`` per device; returns the DataFrame."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    t0 = (int(time.time()) // 3600 - 2) * 3600
    n = seconds * hz
    frames = [pd.DataFrame({"ts": t0 + np.arange(n) / hz, "device": f"d{d}", "t": rng.normal(20 + d, 2, n).round(3)})
              for d in range(devices)]
    df = pd.concat(frames).sort_values("ts", kind="stable")
    df.to_csv(path, index=False)
    return df


def pipeline_yaml(csv, url, measurement, tmp_path, sink_extra="", speed="max", chunk=20_000, checkpoint=""):
    return f"""
pipeline: cloudtest
sources:
  - {{id: readings, type: replay, path: {csv}, tags: [device], speed: {speed}, chunk_size: {chunk}}}
stages:
  - {{id: w10, type: window, inputs: [readings], size: 10s, key: [device], aggregates: {{t: [mean, max, stddev]}}}}
sinks:
  - id: cloud
    type: influxdb
    inputs: [w10]
    url: {url}
    org: acme
    bucket: edge
    measurement: {measurement}
    flush_interval: 0.05
    retry_initial: 0.05
    retry_max: 0.3
    {sink_extra or "drain_timeout: 5"}
runtime:
  state_dir: {tmp_path / "state"}
  dead_letter: null
  {checkpoint}
"""


def test_window_aggregates_land_with_tags_fields_and_window_start(tmp_path, victoria_shared, measurement, monkeypatch):
    monkeypatch.setenv("INFLUX_TOKEN", TOKEN)
    df = write_csv(tmp_path / "r.csv")
    p = load_pipeline(pipeline_yaml(tmp_path / "r.csv", victoria_shared.url, measurement, tmp_path))
    summary = p.run()
    assert summary.error is None, summary.error
    got = victoria_shared.samples(f'{{__name__=~"{measurement}_.*"}}')
    for dev, g in df.groupby("device"):
        start = (g.ts // 10 * 10).astype(int)
        expect = g.groupby(start).t
        series = got[(f"{measurement}_t_mean", (("device", dev),))]
        assert [ts for ts, _ in series] == [s * 1000 for s in expect.mean().index]        # ts = window start
        assert np.allclose([v for _, v in series], expect.mean().values, rtol=1e-12)
        assert [v for _, v in got[(f"{measurement}_t_max", (("device", dev),))]] == list(expect.max().values)
        assert np.allclose([v for _, v in got[(f"{measurement}_t_stddev", (("device", dev),))]],
                           expect.std(ddof=0).values, rtol=1e-9)
        assert [v for _, v in got[(f"{measurement}_count", (("device", dev),))]] == [100.0] * 6
    c = summary.counters
    assert c["cloud"]["outbox_sent"] == 18 and c["cloud"]["bytes_out"] > 0
    bw = Bandwidth.of_pipeline(p.spec, c)
    assert bw.bytes_in == (tmp_path / "r.csv").stat().st_size and bw.bytes_out == c["cloud"]["bytes_out"]
    assert bw.reduction > 20                                               # only aggregates leave the site


@pytest.mark.slow
def test_sigkill_mid_run_then_restart_every_point_arrives_once(tmp_path, victoria, measurement):
    """A pipeline process is killed with SIGKILL while the server is down; the restarted one delivers everything."""
    import os
    import signal
    import subprocess
    import sys

    import pandas as pd

    from tests.connectors.influx.paced_source import readings

    t0 = (int(time.time()) // 3600 - 2) * 3600
    df = pd.DataFrame(readings(devices=2, seconds=300, hz=10, t0=t0))
    cfg = tmp_path / "p.yaml"
    yaml = pipeline_yaml("unused", victoria.url, measurement, tmp_path,
                         checkpoint=f"checkpoint: {{path: {tmp_path / 'cp.db'}, interval: 0.1}}")
    cfg.write_text(yaml.replace("{id: readings, type: replay, path: unused, tags: [device], speed: max, chunk_size: 20000}",
                                f"{{id: readings, type: paced, t0: {t0}, batch: 100, pause: 0.005}}"))
    code = ("import sys; from pipeline import registry, load_pipeline; "
            "registry.SOURCES['paced'] = 'tests.connectors.influx.paced_source:PacedSource'; "
            "s = load_pipeline(sys.argv[1]).run(); sys.exit(bool(s.error))")
    env = {**os.environ, "INFLUX_TOKEN": TOKEN, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen([sys.executable, "-c", code, str(cfg)], env=env, cwd=os.getcwd())
    db = tmp_path / "state" / "outbox-cloud.db"

    def counter(name):
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
                return dict(c.execute("SELECT name, value FROM counters")).get(name, 0)
        except sqlite3.OperationalError:
            return 0

    def until(cond, timeout=30):
        deadline = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < deadline and proc.poll() is None, "the pipeline process did not get there"
            time.sleep(0.02)

    until(lambda: counter("sent") > 0)
    victoria.stop()                       # the uplink drops: points pile up in the outbox
    sent = counter("sent")
    until(lambda: counter("put") > sent + 10 and counter("generation") > 2)
    os.kill(proc.pid, signal.SIGKILL)     # ... and the gateway loses power
    proc.wait()
    outbox = sqlite3.connect(db)
    assert outbox.execute("SELECT count(*) FROM pending").fetchone()[0] > 0
    victoria.start()
    assert subprocess.run([sys.executable, "-c", code, str(cfg)], env=env, cwd=os.getcwd(), timeout=60).returncode == 0
    assert outbox.execute("SELECT count(*) FROM pending").fetchone()[0] == 0
    got = victoria.samples(f'{{__name__="{measurement}_t_mean"}}')
    for dev, g in df.groupby("device"):
        expect = g.groupby((g.ts // 10 * 10).astype(int)).t.mean()
        series = got[(f"{measurement}_t_mean", (("device", dev),))]
        dup = [x for x in series if [t for t, _ in series].count(x[0]) > 1]
        assert [ts for ts, _ in series] == [s * 1000 for s in expect.index], (dup, outbox.execute(
            "SELECT name, value FROM counters").fetchall())       # each window once, none missing
        assert np.allclose([v for _, v in series], expect.values, rtol=1e-12)


def test_token_is_never_logged_and_401_is_loud(tmp_path, http_stub, measurement, caplog, capfd, monkeypatch):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("INFLUX_TOKEN", TOKEN)
    http_stub.default = (401, {}, {"code": "unauthorized", "message": "unauthorized access"})
    write_csv(tmp_path / "r.csv", devices=1, seconds=30)
    p = load_pipeline(pipeline_yaml(tmp_path / "r.csv", http_stub.url, measurement, tmp_path,
                                    sink_extra="drain_timeout: 0.5"))
    summary = p.run()
    assert http_stub.requests and http_stub.requests[0].headers["Authorization"] == f"Token {TOKEN}"
    out, err = capfd.readouterr()
    logs = caplog.text + out + err + repr(summary) + repr(p.spec.sinks[0]) + str(p.spec.sinks[0].model_dump())
    assert TOKEN not in logs
    assert "401" in caplog.text and "unauthorized access" in caplog.text and "INFLUX_TOKEN" not in TOKEN
    assert "dead-letter" in caplog.text and "halted" in caplog.text


def test_token_from_file_and_missing_token_message(tmp_path, monkeypatch):
    from connectors.influx.influxdb import InfluxdbConfig, resolve_token

    monkeypatch.delenv("INFLUX_TOKEN", raising=False)
    (tmp_path / "tok").write_text(TOKEN + "\n")
    base = dict(id="cloud", type="influxdb", inputs=["w"], url="http://x:8086", org="o", bucket="b")
    assert resolve_token(InfluxdbConfig(**base, token_file=str(tmp_path / "tok"))) == TOKEN
    with pytest.raises(ValueError, match="set the environment variable INFLUX_TOKEN") as e:
        resolve_token(InfluxdbConfig(**base))
    assert TOKEN not in str(e.value)
    with pytest.raises(ConfigError, match="url must start with http"):
        load_pipeline("""
sources: [{id: r, type: replay, path: x.csv}]
sinks: [{id: c, type: influxdb, inputs: [r], url: "localhost:8086", org: o, bucket: b}]
""")


def test_cloud_rejected_is_raised_once_with_where_and_what(tmp_path, http_stub):
    from connectors.influx.influxdb import InfluxdbConfig, InfluxdbSink
    from pipeline.batch import Batch
    from pipeline.testing import make_context

    http_stub.push((400, {}, {"code": "invalid", "message": "field type conflict on t_mean"}))
    cfg = InfluxdbConfig(id="cloud", type="influxdb", inputs=["w"], url=http_stub.url, org="o", bucket="b",
                         token=TOKEN, outbox=str(tmp_path / "o.db"), flush_interval=0.01)
    sink = InfluxdbSink(cfg, make_context("cloud")[0])
    try:
        sink.write(Batch.from_records([{"ts": 1e9, "tags": {"d": "a"}, "fields": {"t_mean": 1.0}}]))
        deadline = time.monotonic() + 5
        while sink.sender.error is None and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(CloudRejected, match=r"sink 'cloud'.*400.*field type conflict.*dead-letter table"):
            sink.flush()
        sink.flush()                                   # raised once; the pipeline goes on
    finally:
        sink.close()
    assert TOKEN not in str(sink.sender.error)


def test_sqlite_sink_in_a_pipeline_is_exact_after_replay(tmp_path):
    df = write_csv(tmp_path / "r.csv", devices=2, seconds=30)
    yaml = f"""
sources: [{{id: readings, type: replay, path: {tmp_path / 'r.csv'}, tags: [device]}}]
stages: [{{id: w10, type: window, inputs: [readings], size: 10s, key: [device], aggregates: {{t: [mean]}}}}]
sinks: [{{id: local, type: sqlite, inputs: [w10], path: {tmp_path / 'agg.db'}}}]
runtime: {{dead_letter: null}}
"""
    load_pipeline(yaml).run()
    load_pipeline(yaml).run()                      # the same data again: rows are replaced, not added
    rows = sqlite3.connect(tmp_path / "agg.db").execute(
        "SELECT json_extract(tags, '$.device'), ts, json_extract(fields, '$.t_mean') FROM points ORDER BY 1, 2").fetchall()
    expect = df.groupby(["device", (df.ts // 10 * 10)]).t.mean()
    assert [(d, t) for d, t, _ in rows] == list(expect.index)
    assert np.allclose([v for *_, v in rows], expect.values, rtol=1e-12)


def test_disk_bound_coarsens_inside_the_sink_and_counts_it(tmp_path, http_stub):
    """The server is unreachable (503) and the outbox small: older 10 s windows become 1 min windows, counted."""
    from connectors.influx.influxdb import InfluxdbConfig, InfluxdbSink
    from pipeline.batch import Batch
    from pipeline.testing import make_context

    http_stub.default = (503, {}, "down")
    cfg = InfluxdbConfig(id="cloud", type="influxdb", inputs=["w"], url=http_stub.url, org="o", bucket="b",
                         token=TOKEN, outbox=str(tmp_path / "o.db"), max_outbox_bytes=20_000, window=10,
                         retry_initial=5, drain_timeout=0)
    ctx, _ = make_context("cloud")
    sink = InfluxdbSink(cfg, ctx)
    try:
        t0 = 1_795_000_200.0
        for k in range(60):                            # 10 minutes of 10 s windows for 5 devices
            sink.write(Batch.from_records([{"ts": t0 + 10 * k, "tags": {"device": f"d{d}"},
                                            "fields": {"count": 10, "t_sum": 10.0 * d, "t_mean": float(d)}}
                                           for d in range(5)]))
        sink.flush()
    finally:
        sink.close()
    c = ctx.metrics.by_item()["cloud"]
    assert c["outbox_coarsened_in"] > 0 and c["outbox_coarsened_out"] > 0 and c.get("outbox_dropped", 0) == 0
    rows = sqlite3.connect(tmp_path / "o.db").execute(
        "SELECT json_extract(tags, '$.device'), sum(json_extract(fields, '$.count')), "
        "sum(json_extract(fields, '$.t_sum')) FROM pending GROUP BY 1 ORDER BY 1").fetchall()
    assert rows == [(f"d{d}", 600.0, 600.0 * d) for d in range(5)]       # every reading still accounted for


def test_inf_fields_are_left_out_and_records_without_fields_dead_lettered(tmp_path, http_stub):
    from connectors.influx.influxdb import InfluxdbConfig, InfluxdbSink
    from pipeline.batch import Batch
    from pipeline.testing import make_context

    cfg = InfluxdbConfig(id="cloud", type="influxdb", inputs=["w"], url=http_stub.url, org="o", bucket="b",
                         token=TOKEN, outbox=str(tmp_path / "o.db"))
    ctx, dead = make_context("cloud")
    sink = InfluxdbSink(cfg, ctx)
    try:
        sink.write(Batch.from_records([
            {"ts": 1e9, "tags": {"d": "a"}, "fields": {"t_mean": 1.0, "ratio": float("inf")}},
            {"ts": 1e9 + 10, "tags": {"d": "a"}, "fields": {"ratio": float("-inf")}},
        ]))
        assert sink.outbox.pending() == 1                      # the good point is stored, without its inf field
        assert ctx.metrics.get("cloud", "not_finite") == 2
        assert dead[0][2] == "sink 'cloud': record has no finite numeric field to send"
    finally:
        sink.close()
