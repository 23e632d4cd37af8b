"""The compose topology as native processes: Mosquitto as the stack runs it (tests/support/stack_broker.py),
VictoriaMetrics standing in for InfluxDB's write API, ``edgesieve run compose/pipeline.yaml`` and
``edgesieve simulate`` as the devices. Aggregates must arrive and alerts must be published."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from pipeline import registry
from tests.support.cli import cli_env, edgesieve, start_edgesieve

from tests.support.mosquitto import free_port
from tests.support.stack_broker import StackBroker

from .conftest import MOSQUITTO

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"
PASSWORDS = {"edgesieve": "es-Secret-1", "simulator": "sim-Secret-2", "pump01": "pump01-Secret-3"}
pytestmark = pytest.mark.slow


def _needs(*types: tuple[str, str]) -> None:
    absent = [f"{k} {t}" for k, t in types if t not in registry.KINDS[k]]
    if absent:
        pytest.skip(f"types not on this branch yet: {', '.join(absent)}")


class Listener:
    def __init__(self, port: int, topic: str, user: str):
        self.messages: list[tuple[str, dict]] = []
        self.ready = threading.Event()
        self.refused = None
        c = self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        c.username_pw_set(user, PASSWORDS[user])

        def on_connect(c, u, f, rc, p):
            if rc.is_failure:
                self.refused = str(rc)
                self.ready.set()
            else:
                c.subscribe(topic, qos=1)
        c.on_connect = on_connect
        c.on_subscribe = lambda *a: self.ready.set()
        c.on_message = lambda c, u, m: self.messages.append((m.topic, json.loads(m.payload)))
        c.connect("127.0.0.1", port)
        c.loop_start()
        assert self.ready.wait(10)

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture
def stack_broker(tmp_path):
    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed (apt-get install mosquitto mosquitto-clients)")
    b = StackBroker(tmp_path, PASSWORDS, {"pump01": PASSWORDS["pump01"]})
    yield b
    b.close()


@pytest.fixture
def victoria():
    vm = pytest.importorskip("tests.support.victoria", reason="tests/support/victoria.py (cloud branch) is not here yet")
    if not vm.VictoriaMetrics.available():
        pytest.skip("victoria-metrics is not installed (apt-get install victoria-metrics)")
    with vm.VictoriaMetrics() as server:
        yield server


def _dashboard_series() -> list[str]:
    """Each metric the dashboard queries, with its item/event selector: `edgesieve_records_total{item="motion",...}`."""
    dash = json.loads((COMPOSE / "grafana" / "dashboards" / "edgesieve.json").read_text())
    found = []
    for p in dash["panels"]:
        for t in p["targets"]:
            if "expr" in t:
                found += re.findall(r"edgesieve_\w+(?:\{[^}]*\})?", t["expr"])
    return found


def _scrape_dashboard_names(port: int, deadline: float) -> set[str]:
    """The dashboard's series that /metrics has a sample for (waits up to ``deadline`` for all of them)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    wanted, have = _dashboard_series(), set()
    while time.monotonic() < deadline:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
        for series in wanted:
            name, _, sel = series.partition("{")
            # exact label matchers must match a series; a regex (=~) one may match no sample yet (e.g. no cache hit)
            matchers = re.findall(r'(\w+)="([^"]*)"', sel)
            if any(s.name == name and all(s.labels.get(k) == v for k, v in matchers) for s in samples):
                have.add(series)
        if have == set(wanted):
            break
        time.sleep(1)
    return have


def test_compose_healthcheck_passes_on_this_broker(stack_broker):
    import yaml

    check = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())["services"]["mosquitto"]["healthcheck"]["test"]
    assert check[0] == "CMD-SHELL"
    cmd = check[1].replace("$$", "$").replace("-h 127.0.0.1", f"-h 127.0.0.1 -p {stack_broker.port}")
    ok = subprocess.run(["sh", "-c", cmd], env={**os.environ, "MQTT_EDGESIEVE_PASSWORD": PASSWORDS["edgesieve"]},
                        capture_output=True, timeout=20)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(["sh", "-c", cmd], env={**os.environ, "MQTT_EDGESIEVE_PASSWORD": "wrong"},
                         capture_output=True, timeout=20)
    assert bad.returncode != 0


def test_broker_config_enforces_passwords_and_acls(stack_broker):
    ok = edgesieve("simulate", "--url", stack_broker.url, "--count", "1", "--rate", "0", "--quiet",
                   env=cli_env(MQTT_USERNAME="simulator", MQTT_PASSWORD=PASSWORDS["simulator"]))
    assert ok.returncode == 0, ok.stderr
    bad = edgesieve("simulate", "--url", stack_broker.url, "--count", "1", "--quiet",
                    env=cli_env(MQTT_USERNAME="simulator", MQTT_PASSWORD="wrong"))
    assert bad.returncode == 1 and "refused" in bad.stderr and "wrong" not in bad.stderr
    anon = edgesieve("simulate", "--url", stack_broker.url, "--count", "1", "--quiet",
                     env=cli_env(MQTT_USERNAME="", MQTT_PASSWORD=""))
    assert anon.returncode == 1
    # neither the simulator nor a device may read what devices send (ACL: write-only on sensors)
    spies = [Listener(stack_broker.port, "sensors/#", "simulator"), Listener(stack_broker.port, "sensors/#", "pump01")]
    try:
        edgesieve("simulate", "--url", stack_broker.url, "--count", "3", "--rate", "0", "--quiet",
                  env=cli_env(MQTT_USERNAME="simulator", MQTT_PASSWORD=PASSWORDS["simulator"]))
        time.sleep(0.5)
        assert [s.messages for s in spies] == [[], []]
    finally:
        for s in spies:
            s.close()


def test_compose_topology_aggregates_arrive_and_alerts_are_published(stack_broker, victoria, tmp_path):
    _needs(("sources", "mqtt"), ("sinks", "mqtt"), ("sinks", "influxdb"), ("stages", "anomaly"),
           ("stages", "frame_diff"), ("stages", "onnx"))
    env = cli_env(MQTT_URL=stack_broker.url, MQTT_USERNAME="edgesieve", MQTT_PASSWORD=PASSWORDS["edgesieve"],
                  INFLUX_URL=victoria.url, INFLUX_TOKEN="e2e-token", EDGESIEVE_STATE=str(tmp_path / "state"),
                  EDGESIEVE_NODE="e2e", MODELS_DIR=str(ROOT / "examples" / "models"))
    alerts = Listener(stack_broker.port, "alerts/#", "edgesieve")
    metrics_port = free_port()
    run = start_edgesieve("run", str(COMPOSE / "pipeline.yaml"), "--for", "40", "--metrics-port", str(metrics_port),
                          "--metrics-addr", "0.0.0.0", env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30   # wait until edgesieve is online (retained status, read as edgesieve)
        status = Listener(stack_broker.port, "edgesieve/e2e/+/status", "edgesieve")  # {node}/{pipeline}
        while time.monotonic() < deadline and not any("online" in json.dumps(m) for _, m in status.messages):
            assert run.poll() is None, run.communicate()[1][-3000:]
            time.sleep(0.2)
        status.close()
        import yaml   # the container's health check, as docker-compose.yml runs it
        check = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())["services"]["edgesieve"]["healthcheck"]["test"]
        argv = [a.replace("python", sys.executable, 1) if a == "python" else a.replace("9108", str(metrics_port))
                for a in check[1:]]
        assert subprocess.run(argv, capture_output=True, timeout=20).returncode == 0
        dev_env = cli_env(MQTT_USERNAME="simulator", MQTT_PASSWORD=PASSWORDS["simulator"])
        start = str(int(time.time()) - 3600)   # event time in the past: VictoriaMetrics exports up to now
        sims = [
            start_edgesieve("simulate", "--url", stack_broker.url, "--profile", "pump", "--devices", "3", "--rate", "150",
                            "--interval", "1", "--source", "generator", "--inject", "0.003", "--seed", "3",
                            "--start", start, "--count", "600", "--quiet", env=dev_env),
            start_edgesieve("simulate", "--url", stack_broker.url, "--profile", "camera", "--devices", "1",
                            "--rate", "20", "--interval", "0.5", "--source", "shapes", "--start", start,
                            "--count", "80", "--qos", "1", "--quiet", env=dev_env),
        ]
        for p in sims:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
        bad = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)   # one undecodable reading
        bad.username_pw_set("simulator", PASSWORDS["simulator"])
        bad.connect("127.0.0.1", stack_broker.port)
        bad.loop_start()
        bad.publish("sensors/plant1/pump09/pump", b"not json", qos=1).wait_for_publish(10)
        bad.loop_stop()
        bad.disconnect()
        scraped = _scrape_dashboard_names(metrics_port, time.monotonic() + 15)
        deadline = time.monotonic() + 30
        pumps = cameras = 0
        while time.monotonic() < deadline:
            victoria.force_flush()
            pumps = victoria.count('{__name__="pump_Current_mean"}')
            cameras = victoria.count('{__name__="camera_people_mean"}')
            if pumps >= 3 * 55 and cameras >= 3 and alerts.messages:
                break
            time.sleep(1)
    finally:
        run.terminate()
        out, err = run.communicate(timeout=60)
        alerts.close()
    assert run.returncode == 0, err.decode(errors="replace")[-3000:]
    log = err.decode(errors="replace")[-3000:]
    assert pumps >= 3 * 55, f"pump aggregates in VictoriaMetrics: {pumps} (600 s of readings from 3 pumps)\n{log}"
    assert cameras >= 3, f"camera aggregates in VictoriaMetrics: {cameras} (40 s of frames)\n{log}"
    series = victoria.samples('{__name__="pump_is_anomaly_sum"}')
    assert {dict(labels).get("device") for _, labels in series} == {"pump01", "pump02", "pump03"}
    assert alerts.messages, "no alert was published"
    missing = sorted(set(_dashboard_series()) - scraped)
    assert not missing, f"dashboard queries that match nothing on /metrics: {missing}"
    topic, alert = alerts.messages[0]
    assert re.fullmatch(r"alerts/plant1/pump0[123]", topic)
    assert alert["fields"]["anomaly_alert"] in (True, 1)
