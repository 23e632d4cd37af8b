"""No secret in any output: one pipeline uses every secret-bearing key, and every output is searched for them.

validate (good and broken file), run (json and text logs, a real TLS Mosquitto with passwords), a failing run,
a traceback from a thread, /metrics, the dead-letter file and the demo's summary.json."""

import json
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from connectors.simulate.demo import _summary
from tests.support.cli import cli_env, edgesieve, start_edgesieve
from tests.support.mosquitto import Mosquitto, available, free_port, make_tls_files
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not available(), reason="mosquitto is not installed (apt install mosquitto)")]

SECRETS = {
    "MQTT_FILE_PW": "pw-from-a-file-Q7x",          # password_file
    "MQTT_SINK_PW": "pw-inline-env-Z3k",           # password: ${MQTT_SINK_PW}
    "KEY_PASS": "key-passphrase-M9w",              # tls.key_password: ${KEY_PASS}
    "KEY_PASS_FILE": "key-passfile-R2v",           # tls.key_password_file
    "INFLUX_TOKEN": "influx-token-J5t",            # token: ${INFLUX_TOKEN}
    "TOKEN_FILE": "token-from-file-H8p",           # token_file
    "URL_PW": "url-password-B4n",                  # http://user:${URL_PW}@host
    "TOKEN_ENV": "token-by-env-name-W6c",          # token_env: ENV_TOKEN_VAR
}

PIPELINE = """\
pipeline: secrets
sources:
  - id: devices
    type: mqtt
    url: mqtts://localhost:{port}
    username: edge
    password_file: {dir}/mqtt.pw
    tls: {{ca_file: {ca}, cert_file: {cert}, key_file: {dir}/client-enc.key, key_password_file: {dir}/key.pw}}
    subscriptions: [{{topic: "sensors/#", codec: json, topic_template: "sensors/{{device}}"}}]
stages:
  - {{id: hot, type: filter, inputs: [devices], where: "t > 0", on_error: {on_error}}}
sinks:
  - id: alerts
    type: mqtt
    inputs: [hot]
    url: mqtts://localhost:{port}
    username: alerts
    password: ${{MQTT_SINK_PW}}
    tls: {{ca_file: {ca}, cert_file: {cert}, key_file: {dir}/client-enc2.key, key_password: "${{KEY_PASS}}"}}
    topic_template: "alerts/{{device}}"
  - {{id: cloud, type: influxdb, inputs: [hot], url: "http://bob:${{URL_PW}}@127.0.0.1:{dead}", org: o, bucket: b,
     token: "${{INFLUX_TOKEN}}", outbox: {dir}/o1.db, timeout: 1s}}
  - {{id: cloud2, type: influxdb, inputs: [hot], url: "http://127.0.0.1:{dead}", org: o, bucket: b,
     token_file: {dir}/token.txt, outbox: {dir}/o2.db, timeout: 1s}}
  - {{id: cloud3, type: influxdb, inputs: [hot], url: "http://127.0.0.1:{dead}", org: o, bucket: b,
     token_env: ENV_TOKEN_VAR, outbox: {dir}/o3.db, timeout: 1s}}
runtime: {{dead_letter: {dir}/dead.ndjson, state_dir: {dir}/state}}
"""


def _encrypted_key(src, dst, passphrase):
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(src.read_bytes(), password=None)
    dst.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.BestAvailableEncryption(passphrase.encode())))


def assert_clean(what: str, text: str) -> None:
    leaked = [name for name, value in SECRETS.items() if value in text]
    assert not leaked, f"{what} shows {leaked}:\n{text[-3000:]}"


@pytest.fixture()
def setup(tmp_path):
    tls = make_tls_files(tmp_path / "pki")
    (tmp_path / "mqtt.pw").write_text(SECRETS["MQTT_FILE_PW"] + "\n")
    (tmp_path / "key.pw").write_text(SECRETS["KEY_PASS_FILE"] + "\n")
    (tmp_path / "token.txt").write_text(SECRETS["TOKEN_FILE"] + "\n")
    _encrypted_key(tls.client_key, tmp_path / "client-enc.key", SECRETS["KEY_PASS_FILE"])
    _encrypted_key(tls.client_key, tmp_path / "client-enc2.key", SECRETS["KEY_PASS"])
    env = cli_env(**{k: v for k, v in SECRETS.items() if k not in ("MQTT_FILE_PW", "KEY_PASS_FILE", "TOKEN_FILE")},
                  ENV_TOKEN_VAR=SECRETS["TOKEN_ENV"])
    broker = Mosquitto(tmp_path / "broker", users={"edge": SECRETS["MQTT_FILE_PW"], "alerts": SECRETS["MQTT_SINK_PW"]},
                       tls=tls, require_client_cert=True)

    def write(name, on_error="dead_letter", **changes):
        text = PIPELINE.format(port=broker.port, dir=tmp_path, ca=tls.ca, cert=tls.client_cert, dead=free_port(),
                               on_error=on_error)
        for old, new in changes.items():
            text = text.replace(old, new)
        (tmp_path / name).write_text(text)
        return tmp_path / name

    with broker:
        yield tmp_path, env, write, broker, tls


def test_no_secret_in_validate_run_logs_errors_tracebacks_metrics_or_summaries(setup):
    tmp_path, env, write, broker, tls = setup
    good = write("p.yaml")
    outputs = {}

    ok = edgesieve("validate", str(good), env=env)
    assert ok.returncode == 0, ok.stderr
    assert "http://***@127.0.0.1" in ok.stdout                           # the URL is shown, its credentials are not
    outputs["validate"] = ok.stdout + ok.stderr
    broken = write("broken.yaml", **{"http://bob:": "ftp://bob:", "timeout: 1s}": "timeout: -1s}"})
    bad = edgesieve("validate", str(broken), env=env)
    assert bad.returncode == 1 and "ftp://***@" in bad.stderr
    outputs["validate (broken)"] = bad.stdout + bad.stderr

    port = free_port()
    proc = start_edgesieve("run", str(good), "--for", "60", "--metrics-port", str(port), "--log-format", "json", env=env)
    if not wait_for(lambda: "edgesieve_connected" in scrape(port), 30, 0.3):   # a gauge the mqtt items set at start
        proc.kill()
        pytest.fail(f"the pipeline did not start: {proc.communicate()[1][-3000:]}")
    time.sleep(2.0)                                                        # subscribed by now
    publish(broker, tls, tmp_path, [{"t": 5.0}, "{not json"])             # one alert, one dead letter
    assert wait_for(lambda: 'item="hot"' in scrape(port), 30, 0.3), "no record reached the filter"
    time.sleep(3.0)                                                        # let the influx senders fail and log
    metrics = scrape(port)
    proc.send_signal(signal.SIGINT)
    out, err = (x.decode() for x in proc.communicate(timeout=60))
    assert proc.returncode == 0, err
    assert 'item="hot"' in metrics and "unreachable" in err                # it ran, and the uplink failure was logged
    outputs |= {"/metrics": metrics, "run (json logs)": out + err, "dead letters": (tmp_path / "dead.ndjson").read_text()}

    text = edgesieve("run", str(good), "--for", "2", env=env)
    outputs["run (text logs)"] = text.stdout + text.stderr

    stops = write("stop.yaml", on_error="stop", **{'where: "t > 0"': "where: \"t * device > 0\""})
    proc = start_edgesieve("run", str(stops), "--for", "20", env=env)
    time.sleep(3)
    publish(broker, tls, tmp_path, [{"t": 5.0}])
    out, err = (x.decode() for x in proc.communicate(timeout=60))
    assert proc.returncode == 1 and "error" in out + err                   # a run that fails on a stage error
    outputs["failing run"] = out + err

    wrong = write("wrong.yaml", **{f"{tmp_path}/key.pw": f"{tmp_path}/token.txt"})   # wrong key passphrase
    cannot = edgesieve("run", str(wrong), "--for", "2", env=env)
    assert cannot.returncode == 1 and "cannot load the TLS files" in cannot.stdout + cannot.stderr
    outputs["run that cannot start"] = cannot.stdout + cannot.stderr

    crash = subprocess.run([sys.executable, "-c", f"""
import logging, threading
from pipeline.cli import setup_logging
from pipeline.loader import parse_pipeline
from connectors.influx.influxdb import resolve_token
spec = parse_pipeline({str(good)!r})
token = resolve_token(spec.sinks[1])
setup_logging("text")
try:
    raise RuntimeError("bad token " + token)
except RuntimeError:
    logging.getLogger("x").exception("failed with %s", token)
t = threading.Thread(target=lambda: (_ for _ in ()).throw(ValueError("in a thread: " + token))); t.start(); t.join()
raise SystemError("uncaught: " + token)
"""], capture_output=True, text=True, env=env, timeout=60)
    assert "uncaught: ***" in crash.stderr and "in a thread: ***" in crash.stderr and "Traceback" in crash.stderr
    outputs["tracebacks"] = crash.stdout + crash.stderr

    summary = _summary_json(tmp_path)
    outputs["summary.json"] = summary
    for what, shown in outputs.items():
        assert_clean(what, shown)


def scrape(port) -> str:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return ""


def publish(broker, tls, tmp_path, readings):
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.username_pw_set("edge", SECRETS["MQTT_FILE_PW"])
    c.tls_set(ca_certs=str(tls.ca), certfile=str(tls.client_cert), keyfile=str(tmp_path / "client-enc.key"),
              keyfile_password=SECRETS["KEY_PASS_FILE"])
    c.connect("localhost", broker.port)
    c.loop_start()
    for i, r in enumerate(readings):
        payload = r if isinstance(r, str) else json.dumps({"ts": 1_700_000_000 + i, **r})
        c.publish("sensors/pump1", payload, qos=1).wait_for_publish(5)
    c.loop_stop()
    c.disconnect()


def _summary_json(tmp_path) -> str:
    """The demo's summary.json with an InfluxDB URL that carries credentials (``--influx-url``)."""
    class Stats:
        lock = __import__("threading").Lock()
        samples = [__import__("collections").defaultdict(int)]
        readings = flagged = alerts = truth = {}
        camera_note = "generated scenes"

    class Summary:
        seconds, stopped_by, error, counters = 1.0, "duration", None, {}

    class Broker:
        kind, protocol = "mosquitto", "5"

    try:
        result = _summary(Stats(), Summary(), Broker(), {}, tmp_path, "r.png", 0,
                          {"url": f"https://bob:{SECRETS['URL_PW']}@influx.example", "org": "o", "bucket": "b"})
    except (KeyError, AttributeError, TypeError) as exc:  # the demo's summary needs more than this stand-in
        pytest.fail(f"update the summary stand-in: {exc!r}")
    return json.dumps(result, default=str)
