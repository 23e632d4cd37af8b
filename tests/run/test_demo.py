"""``edgesieve demo``: the README's main command runs end to end and leaves its summary and PNG report."""

from __future__ import annotations

import importlib.util
import json

import pytest

from connectors.simulate.demo import DEMO_FILE, missing_types
from connectors.simulate.demo.broker import EmbeddedBroker
from tests.support.cli import edgesieve

pytestmark = pytest.mark.slow


def _full_demo_or_skip():
    absent = missing_types()
    if absent:
        pytest.skip(f"the full demo needs {', '.join(absent)} (not on this branch yet)")


def test_demo_for_20_seconds_writes_summary_and_report(tmp_path):
    _full_demo_or_skip()
    out = tmp_path / "demo"
    r = edgesieve("demo", "--for", "20", "--no-live", "--out", str(out), timeout=150, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "edgesieve demo: 20 s" in r.stderr and "readings → out" in r.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["stopped_by"].startswith("--for") and s["error"] is None
    assert s["records_received"] > 0.9 * s["messages_published"] > 500
    assert s["frames_in"] > 100 and 0 < s["frames_skipped"] < s["frames_in"]
    assert s["aggregates"] > 50
    assert s["bytes_out"] and s["reading_bytes"] / s["bytes_out"] > 5     # only aggregates and alerts leave
    # published (readings and frames apart) vs received: equal but for what was in flight at the stop
    assert abs(s["reading_bytes"] + s["frame_bytes"] - s["bytes_in"]) < 0.05 * s["bytes_in"]
    assert s["frame_bytes"] > s["reading_bytes"] > 0
    if importlib.util.find_spec("cv2") is not None and (DEMO_FILE.parents[2].parent / "shared" / "data" / "video" / "vtest.avi").is_file():
        assert s["cameras_show"] == "the sample video vtest.avi" and "from video" in s["devices"]
    else:
        assert s["cameras_show"].startswith("GENERATED moving shapes") and "GENERATED" in r.stderr
    assert sum(a["flagged"] for a in s["anomalies"].values()) > 0
    assert sum(a["alerts"] for a in s["anomalies"].values()) > 0          # alerts came back over MQTT
    png = out / "report.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 30_000


def test_demo_runs_on_the_embedded_python_broker_without_shared_data(tmp_path):
    _full_demo_or_skip()
    pytest.importorskip("amqtt", reason="amqtt (pip install amqtt) is the embedded broker when mosquitto is absent")
    out = tmp_path / "demo"
    r = edgesieve("demo", "--for", "8", "--no-live", "--broker", "amqtt", "--pumps", "2", "--cameras", "1",
                  "--data", str(tmp_path / "no-data"), "--out", str(out), timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["broker"] == "amqtt" and s["mqtt_protocol"] == "3.1.1"
    assert s["devices"] == "2 pumps from generator, 1 camera from shapes"
    assert s["cameras_show"].startswith("GENERATED moving shapes, not the sample video (")   # said plainly
    assert s["records_received"] > 100 and (out / "report.png").exists()


def test_quickstart_still_runs(tmp_path):
    r = edgesieve("demo", "--quickstart", "--for", "3", "--out", str(tmp_path / "q"), timeout=60)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "aggregates:" in r.stderr


def test_demo_file_validates_when_its_types_exist():
    _full_demo_or_skip()
    from pipeline.loader import parse_pipeline

    spec = parse_pipeline(DEMO_FILE, env={"MODELS_DIR": str(DEMO_FILE.parents[1] / "models")})
    assert {s.type for s in spec.stages} >= {"anomaly", "frame_diff", "onnx", "window"}


def test_external_broker_is_used_as_given():
    b = EmbeddedBroker.choose("mqtt://broker.example:1883")
    assert (b.kind, b.url) == ("external", "mqtt://broker.example:1883")
    b.close()


def test_demo_sends_aggregates_to_influxdb_through_the_outbox(tmp_path):
    _full_demo_or_skip()
    vm = pytest.importorskip("tests.support.victoria")
    if not vm.VictoriaMetrics.available():
        pytest.skip("victoria-metrics is not installed (apt-get install victoria-metrics)")
    from tests.support.cli import cli_env

    out = tmp_path / "demo"
    with vm.VictoriaMetrics() as server:
        r = edgesieve("demo", "--for", "8", "--no-live", "--pumps", "2", "--cameras", "0", "--influx-url", server.url,
                      "--out", str(out), timeout=120, cwd=tmp_path, env=cli_env(INFLUX_TOKEN="demo-token"))
        assert r.returncode == 0, r.stderr[-4000:]
        s = json.loads((out / "summary.json").read_text())
        assert s["influxdb"] == server.url
        landed = server.count('{__name__="demo_Current_mean"}')
    assert landed == s["aggregates"] > 5          # every window reached the server, none twice
    assert "demo-token" not in r.stderr


def test_ctrl_c_ends_the_demo_with_its_summary_and_report(tmp_path):
    _full_demo_or_skip()
    import signal
    import time

    from tests.support.cli import start_edgesieve

    out = tmp_path / "demo"
    p = start_edgesieve("demo", "--no-live", "--pumps", "2", "--cameras", "1", "--out", str(out), cwd=tmp_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (out / "anomalies.ndjson").exists():   # running: its sinks are open
        assert p.poll() is None, p.communicate()[1][-3000:]
        time.sleep(0.2)
    time.sleep(3)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 0, err[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["stopped_by"] == "SIGINT" and s["records_received"] > 0
    assert (out / "report.png").exists()
