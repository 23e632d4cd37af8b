"""CLI conventions a Telegraf/eKuiper user expects: --version, --log-level, durations, one-line errors,
--progress that says why it draws nothing, and `edgesieve test` (what each stage makes of a few inputs)."""

from __future__ import annotations

import socket
import time
import uuid


from pipeline import __version__
from tests.support.cli import edgesieve, start_edgesieve
from tests.support.clients import Client
from tests.support.mosquitto import free_port

CSV = "ts,device,temperature\n" + "".join(f"{1700000000 + i},pump{i % 2},{20 + i}\n" for i in range(20))


def write_pipeline(tmp_path, source=None, where="temperature > 25", extra=""):
    (tmp_path / "r.csv").write_text(CSV)
    source = source or f"{{id: readings, type: replay, path: {tmp_path / 'r.csv'}, tags: [device]}}"
    f = tmp_path / "p.yaml"
    f.write_text(f"""\
pipeline: day1
sources:
  - {source}
stages:
  - {{id: hot, type: filter, inputs: [readings], where: "{where}"}}
  - {{id: per_min, type: window, inputs: [hot], size: 1m, key: [device], aggregates: {{temperature: [mean, max]}}}}
sinks:
  - {{id: out, type: file, inputs: [per_min], path: {tmp_path / 'out.ndjson'}}}
runtime:
  state_dir: {tmp_path / 'state'}
  dead_letter: {tmp_path / 'dead.ndjson'}
  checkpoint: {{path: {tmp_path / 'ckpt'}}}
{extra}""")
    return f


def test_version():
    r = edgesieve("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"edgesieve {__version__}"


def test_for_takes_durations_and_refuses_nonsense(tmp_path):
    f = write_pipeline(tmp_path)
    assert edgesieve("run", str(f), "--for", "1m").returncode == 0        # the replay ends long before
    r = edgesieve("run", str(f), "--for", "1 minute")
    assert r.returncode == 2 and "invalid duration" in r.stderr and "Traceback" not in r.stderr


def test_log_level(tmp_path):
    f = write_pipeline(tmp_path, where="temprature > 25")
    loud = edgesieve("run", str(f))
    assert "did you mean 'temperature'?" in loud.stderr
    quiet = edgesieve("run", str(f), "--log-level", "error")
    assert quiet.returncode == 0 and "WARNING" not in quiet.stderr and "INFO" not in quiet.stderr


def test_missing_file_is_one_line(tmp_path):
    for cmd in ("run", "validate", "test"):
        r = edgesieve(cmd, str(tmp_path / "nope.yaml"))
        assert r.returncode == 1 and r.stderr.strip() == f"edgesieve: {tmp_path / 'nope.yaml'}: no such file", cmd


def test_busy_metrics_port_is_one_line(tmp_path):
    f = write_pipeline(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        r = edgesieve("run", str(f), "--metrics-port", str(s.getsockname()[1]))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot serve metrics" in lines[0] and "--metrics-port" in lines[0]


def test_unreachable_broker_gives_one_line_warnings_not_tracebacks(tmp_path):
    port = free_port()
    source = f'{{id: readings, type: mqtt, url: "mqtt://127.0.0.1:{port}", subscriptions: [{{topic: "x/#"}}]}}'
    r = edgesieve("run", str(write_pipeline(tmp_path, source=source)), "--for", "1500ms")
    assert r.returncode == 0 and "Traceback" not in r.stderr
    assert f"cannot connect to 127.0.0.1:{port}" in r.stderr


def test_progress_says_why_it_draws_nothing_when_stderr_is_not_a_terminal(tmp_path):
    r = edgesieve("run", str(write_pipeline(tmp_path)), "--progress")
    assert r.returncode == 0 and "only when stderr is a terminal" in r.stderr


def test_test_command_with_an_input_file_prints_each_stage_and_writes_nothing(tmp_path):
    f = write_pipeline(tmp_path)
    inp = tmp_path / "samples.ndjson"
    inp.write_text('{"ts": 1700000000, "device": "pump1", "temperature": 30}\n'
                   '{"ts": 1700000001, "tags": {"device": "pump2"}, "fields": {"temperature": 20}}\n'
                   '{"ts": 1700000002, "tags": {"device": "pump1"}, "fields": {"temperature": "hot"}}\n')
    r = edgesieve("test", str(f), "--input", str(inp))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "source 'readings' (replay): 3 records" in out
    assert "stage 'hot' (filter) <- readings: 1 record" in out
    assert "stage 'per_min' (window) <- hot: 1 record" in out and '"temperature_max":30.0' in out
    assert "sink 'out' (file) would receive (nothing written): 1 record" in out
    assert "dead letters: 1" in out and "'temperature'" in out
    assert not (tmp_path / "out.ndjson").exists() and not (tmp_path / "state").exists()
    assert not (tmp_path / "ckpt").exists() and not (tmp_path / "dead.ndjson").exists()


def test_test_command_runs_the_sources_for_n_samples(tmp_path):
    r = edgesieve("test", str(write_pipeline(tmp_path)), "--samples", "7")
    assert r.returncode == 0, r.stderr
    assert "source 'readings' (replay): 7 records" in r.stdout and "stage 'hot' (filter) <- readings: 1 record" in r.stdout
    assert not (tmp_path / "out.ndjson").exists() and not (tmp_path / "ckpt").exists()


def test_test_command_over_mosquitto_leaves_no_trace_on_the_broker(mqtt_broker, prefix, tmp_path):
    node = f"gw-{uuid.uuid4().hex[:6]}"
    source = (f'{{id: readings, type: mqtt, url: "{mqtt_broker.url}", node: {node}, '
              f'subscriptions: [{{topic_template: "{prefix}/{{device}}"}}]}}')
    f = write_pipeline(tmp_path, source=source)
    proc = start_edgesieve("test", str(f), "--samples", "3", "--timeout", "20s")
    pub = Client(mqtt_broker)
    try:
        deadline = time.monotonic() + 20
        i = 0
        while proc.poll() is None and time.monotonic() < deadline:
            pub.publish(f"{prefix}/pump{i % 2}", {"ts": 1700000000 + i, "temperature": 20 + 3 * i})
            i += 1
            time.sleep(0.1)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()
    text = out.decode()
    assert "source 'readings' (mqtt): 3 records" in text and '"device":"pump' in text
    status = Client(mqtt_broker).subscribe(f"edgesieve/{node}/#")
    time.sleep(0.5)
    assert status.messages == []                           # no retained online/offline status was left
    pub.close()
