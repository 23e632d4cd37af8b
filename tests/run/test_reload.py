"""Reload (SIGHUP, --watch) of a running pipeline against a real Mosquitto: an invalid file is refused and the old
graph goes on, unchanged stages keep their state (a window open across the reload counts every reading, as an
uninterrupted run does), a changed stage takes its new config, and what changed is logged."""

from __future__ import annotations

import signal
import threading
import time

from tests.support.cli import cli_env, start_edgesieve
from tests.support.clients import Client, read_ndjson

T0 = 1_700_000_040.0


def pipeline_text(prefix, tmp_path, threshold, extra_stage=""):
    return f"""\
pipeline: reload
sources:
  - id: devices
    type: mqtt
    url: URL
    subscriptions: [{{topic_template: "{prefix}/{{device}}", qos: 1}}]
stages:
  - {{id: per_minute, type: window, inputs: [devices], size: 1m, key: [device], aggregates: {{t: [count, max]}}}}
  - {{id: hot, type: filter, inputs: [devices], where: "t > {threshold}"}}
{extra_stage}sinks:
  - {{id: windows, type: file, inputs: [per_minute], path: {tmp_path / 'windows.ndjson'}}}
  - {{id: hot_out, type: file, inputs: [hot], path: {tmp_path / 'hot.ndjson'}}}
runtime: {{dead_letter: null, batching: {{max_wait: 0.02}}}}
"""


class Stderr:
    def __init__(self, proc):
        self.lines: list[str] = []
        self.t = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.t.start()

    def _read(self, proc):
        for line in proc.stderr:
            self.lines.append(line.decode(errors="replace"))

    def wait_for(self, text, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return True
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not logged:\n{''.join(self.lines)[-3000:]}")


def start(mqtt_broker, prefix, tmp_path, threshold, *args):
    f = tmp_path / "p.yaml"
    write = lambda text: f.write_text(text.replace("URL", mqtt_broker.url))
    write(pipeline_text(prefix, tmp_path, threshold))
    proc = start_edgesieve("run", str(f), *args, "--for", "90s", env=cli_env(), cwd=tmp_path)
    err = Stderr(proc)
    err.wait_for("subscribed to")
    pub = Client(mqtt_broker)

    def publish(start, stop):
        for i in range(start, stop):
            pub.publish(f"{prefix}/pump1", {"ts": T0 + i, "t": float(i)})
        time.sleep(1.0)                 # processed (batches are 20 ms)
    return f, write, proc, err, pub, publish


def finish(proc, err, pub, tmp_path):
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
        err.t.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        pub.close()
    log = "".join(err.lines)
    assert proc.returncode == 0, log[-3000:]
    hot = [r["fields"]["t"] for r in read_ndjson(tmp_path / "hot.ndjson")]
    windows = [(w["ts"], w["fields"]["t_count"], w["fields"]["t_max"]) for w in read_ndjson(tmp_path / "windows.ndjson")]
    return log, hot, windows


def test_watch_reloads_refuses_invalid_files_and_keeps_unchanged_state(mqtt_broker, prefix, tmp_path):
    f, write, proc, err, pub, publish = start(mqtt_broker, prefix, tmp_path, 10, "--watch")
    try:
        publish(0, 20)                      # t = 0..19: hot (> 10) gets 11..19
        f.write_text("pipeline: reload\nsources:\n  - id: devices\n\ttype: mqtt\n")     # not YAML: refused
        err.wait_for("goes on unchanged")
        assert any("YAML indents with spaces, not tabs" in line for line in err.lines)
        publish(20, 30)                     # the old graph still runs: hot gets 20..29
        write(pipeline_text(prefix, tmp_path, 35, extra_stage='  - {id: cold, type: filter, inputs: [devices], where: "t < 0"}\n'))
        err.wait_for("its output goes nowhere")           # valid YAML, invalid pipeline: refused as well
        write(pipeline_text(prefix, tmp_path, 35))
        err.wait_for("stage 'hot' changed")
        publish(30, 50)                     # after the reload: hot (> 35) gets 36..49
    except BaseException:
        proc.kill()
        raise
    log, hot, windows = finish(proc, err, pub, tmp_path)
    assert "stage 'per_minute' unchanged (state kept)" in log
    assert hot == [float(i) for i in [*range(11, 30), *range(36, 50)]]
    # one window for the 50 readings, open across the reloads: every reading counted once, as without them
    assert windows == [(T0, 50, 49.0)]


def test_sighup_reloads(mqtt_broker, prefix, tmp_path):
    f, write, proc, err, pub, publish = start(mqtt_broker, prefix, tmp_path, 10)
    try:
        publish(0, 20)
        write(pipeline_text(prefix, tmp_path, 25))
        proc.send_signal(signal.SIGHUP)
        err.wait_for("stage 'hot' changed")
        publish(20, 30)
    except BaseException:
        proc.kill()
        raise
    log, hot, windows = finish(proc, err, pub, tmp_path)
    assert hot == [float(i) for i in [*range(11, 20), *range(26, 30)]] and windows == [(T0, 30, 29.0)]
