"""The docker compose stack, checked without Docker: the Compose Specification schema, every file it mounts or
builds from, its variables, the mounted pipeline file, and the Grafana and Mosquitto configuration."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from pipeline import registry
from pipeline.errors import ConfigError
from pipeline.loader import parse_pipeline

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"
FILE = COMPOSE / "docker-compose.yml"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?([-?])([^}]*))?\}")


def env_example() -> dict[str, str]:
    env = {}
    for line in (COMPOSE / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            k, _, v = line.partition("=")
            env[k.strip()] = v.strip()
    return env


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR:?error} and $$ (a literal $)."""
    def sub(m):
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if env.get(name):
            return env[name]
        if op == "?":
            raise AssertionError(f"{FILE.name}: ${{{name}}} is required ({arg}) but .env.example does not set it")
        return arg if op == "-" else ""
    text = text.replace("$$", "\0")
    return _VAR.sub(sub, text).replace("\0", "$")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(interpolate(FILE.read_text(), env_example()))


def _validator():
    jsonschema = pytest.importorskip("jsonschema", reason="pip install jsonschema to validate the compose file")
    schema = json.loads((COMPOSE / "schema" / "compose-spec.json").read_text())
    return jsonschema.Draft201909Validator(schema)   # what its "$schema" means (written with an old URL)


def test_valid_against_the_compose_specification(compose):
    validator = _validator()
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)
    raw = yaml.safe_load(FILE.read_text())          # before interpolation too: only strings are substituted
    assert not list(validator.iter_errors(raw))


def test_schema_rejects_what_compose_rejects():
    v = _validator()
    assert list(v.iter_errors({"services": {"a": {"image": "x", "restart_policy": "always"}}}))
    assert list(v.iter_errors({"services": {"a": {"image": "x", "healthcheck": {"test": 5}}}}))
    assert list(v.iter_errors({"services": {"a": {"image": "x", "depends_on": {"b": {"condition": 1}}}}}))


def test_the_stack_has_every_part(compose):
    s = compose["services"]
    assert s["mosquitto"]["image"].startswith("eclipse-mosquitto:2")
    assert s["influxdb"]["image"].startswith("influxdb:2")
    init = s["influxdb"]["environment"]
    for k in ("MODE", "USERNAME", "PASSWORD", "ORG", "BUCKET", "ADMIN_TOKEN"):
        assert init[f"DOCKER_INFLUXDB_INIT_{k}"], k
    assert init["DOCKER_INFLUXDB_INIT_MODE"] == "setup"
    es = s["edgesieve"]
    assert es["build"]["dockerfile"] == "Dockerfile" and "healthcheck" in es
    state = [v for v in es["volumes"] if v.endswith(":/var/lib/edgesieve")]
    assert state and state[0].split(":")[0] in compose["volumes"]            # a named volume, not a bind mount
    assert es["environment"]["EDGESIEVE_STATE"] == "/var/lib/edgesieve"
    assert {"simulate-pumps", "simulate-cameras", "grafana"} <= set(s)
    for name in ("simulate-pumps", "simulate-cameras"):
        assert s[name]["command"][0] == "simulate" and s[name]["image"] == es["image"]
    for name in ("mosquitto", "influxdb", "edgesieve", "grafana"):
        assert "healthcheck" in s[name], name
    assert es["depends_on"]["mosquitto"]["condition"] == "service_healthy"


def test_every_mounted_and_built_file_exists(compose):
    missing = []
    for name, svc in compose["services"].items():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith((".", "/")) and not (COMPOSE / src).exists():
                missing.append(f"{name}: {src}")
        build = svc.get("build")
        if build:
            ctx = COMPOSE / build["context"]
            dockerfile = ctx / build.get("dockerfile", "Dockerfile")
            if not dockerfile.is_file():
                missing.append(f"{name}: {dockerfile}")
                continue
            for line in dockerfile.read_text().splitlines():
                m = re.match(r"\s*(COPY|ADD)\s+(?!--from)(.+)", line)
                if m:
                    for src in m.group(2).split()[:-1]:
                        if not src.startswith("--") and not (ctx / src).exists():
                            missing.append(f"{dockerfile.name}: COPY {src}")
    assert not missing, f"missing files: {missing}"


def test_secrets_come_from_env_and_are_never_defaulted():
    text = FILE.read_text()
    for var in ("MQTT_EDGESIEVE_PASSWORD", "MQTT_SIMULATOR_PASSWORD", "INFLUX_TOKEN", "INFLUX_ADMIN_PASSWORD",
                "GRAFANA_ADMIN_PASSWORD"):
        uses = re.findall(r"\$\{" + var + r"([^}]*)\}", text)
        assert uses and all(u.startswith(":?") for u in uses), f"{var} must be required (${{{var}:?...}}), never defaulted"
    used = {m.group(1) for m in _VAR.finditer(text)}
    assert used <= set(env_example()), f".env.example lacks {sorted(used - set(env_example()))}"


def test_mounted_pipeline_file_validates(compose):
    es = compose["services"]["edgesieve"]
    mounted = [v.split(":") for v in es["volumes"] if v.split(":")[1].startswith("/config/")]
    assert mounted
    for src, target, *_ in mounted:
        assert target in es["command"], f"{target} is mounted but not what edgesieve runs"
        path = COMPOSE / src
        doc = yaml.safe_load(path.read_text())
        used = {("sources", i["type"]) for i in doc["sources"]} | {("stages", i["type"]) for i in doc["stages"]} | \
               {("sinks", i["type"]) for i in doc["sinks"]}
        absent = sorted(f"{kind[:-1]} {t}" for kind, t in used if t not in registry.KINDS[kind])
        if absent:
            pytest.skip(f"{src} uses types not on this branch yet: {', '.join(absent)}")
        env = {k: str(v) for k, v in es["environment"].items()}
        env["MODELS_DIR"] = str(ROOT / "examples" / "models")
        env["INFLUX_TOKEN_FILE"] = ""
        try:
            parse_pipeline(path, env=env)
        except ConfigError as exc:
            pytest.fail(f"{src} does not validate:\n" + "\n".join(map(str, exc.problems)))


def test_grafana_provisioning_matches_the_dashboard(compose):
    prov = COMPOSE / "grafana" / "provisioning"
    sources = {d["uid"]: d for d in yaml.safe_load((prov / "datasources" / "datasources.yaml").read_text())["datasources"]}
    influx = next(d for d in sources.values() if d["type"] == "influxdb")
    assert influx["jsonData"]["version"] == "Flux" and "token" in influx["secureJsonData"]
    assert influx["secureJsonData"]["token"] == "$__file{/tokens/read.token}"     # the read-only token (tokens.sh)
    assert influx["url"] == "http://influxdb:8086"
    prom = next(d for d in sources.values() if d["type"] == "prometheus")
    assert prom["url"] == "http://prometheus:9090"
    scrape = yaml.safe_load((COMPOSE / "prometheus" / "prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["static_configs"][0]["targets"] == ["edgesieve:9108"]
    cmd = compose["services"]["edgesieve"]["command"]
    assert cmd[cmd.index("--metrics-port") + 1] == "9108" and cmd[cmd.index("--metrics-addr") + 1] == "0.0.0.0"
    dash_prov = yaml.safe_load((prov / "dashboards" / "edgesieve.yaml").read_text())["providers"][0]
    assert dash_prov["options"]["path"] == "/var/lib/grafana/dashboards"
    dash = json.loads((COMPOSE / "grafana" / "dashboards" / "edgesieve.json").read_text())
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for word in ("aggregates", "anomalies", "skipped", "cache", "bytes"):
        assert word in titles, word
    for p in dash["panels"]:
        assert p["datasource"]["uid"] in sources
        for t in p["targets"]:
            assert t["datasource"]["uid"] in sources
            assert ("from(bucket:" in t["query"]) if t["datasource"]["type"] == "influxdb" else "edgesieve_" in t["expr"]


def test_mosquitto_config_uses_mounted_files_and_passwords(compose):
    conf = (COMPOSE / "mosquitto" / "mosquitto.conf").read_text()
    assert re.search(r"^allow_anonymous false$", conf, re.M)
    mounts = {v.split(":")[1]: v.split(":")[0] for v in compose["services"]["mosquitto"]["volumes"]}
    acl = re.search(r"^acl_file (\S+)", conf, re.M).group(1)
    assert acl in mounts
    pw = re.search(r"^password_file (\S+)", conf, re.M).group(1)
    assert pw.startswith("/mosquitto/data/") and "/mosquitto/data" in mounts   # written at start by entrypoint.sh
    entry = (COMPOSE / "mosquitto" / "entrypoint.sh").read_text()
    assert pw.replace("/mosquitto/", '"$dir/') + '"' in entry and "mosquitto_passwd -b" in entry    # $dir: /mosquitto
    acl = (COMPOSE / "mosquitto" / "acl").read_text()
    assert set(re.findall(r"^user (\S+)", acl, re.M)) == {"edgesieve", "simulator"}
    assert set(re.findall(r"^pattern (.+)$", acl, re.M)) == {"write sensors/+/%u/#", "read alerts/+/%u",
                                                              "read commands/+/%u/#"}


def test_deploy_doc_walks_through_the_stack():
    doc = (ROOT / "docs" / "deploy.md").read_text()
    assert doc.startswith("# Deploy with docker compose")
    for needle in ("cp .env.example .env", "docker compose up -d --build", "--profile simulate", "mosquitto_sub",
                   "http://localhost:3000", "docker compose down"):
        assert needle in doc, needle


# ------------------------------------------------------------------ safe as shipped (docs/security.md)
def _ports(compose) -> dict[str, list[str]]:
    return {name: [str(p) for p in svc.get("ports", [])] for name, svc in compose["services"].items()}


def test_every_port_but_mqtt_tls_is_published_on_loopback_only(compose):
    ports = _ports(compose)
    published = [(name, p) for name, ps in ports.items() for p in ps]
    assert ("mosquitto", "0.0.0.0:8883:8883") in published                       # devices: TLS, every interface
    for name, p in published:
        if p != "0.0.0.0:8883:8883":
            assert p.startswith("127.0.0.1:"), f"{name} publishes {p} beyond this host"
    assert "127.0.0.1:1883:1883" in ports["mosquitto"]                           # plain MQTT: this host only
    assert {"influxdb", "edgesieve", "grafana"} <= {n for n, _ in published}
    opened = yaml.safe_load(interpolate(FILE.read_text(), {**env_example(), "BIND_ADDR": "0.0.0.0"}))
    assert "0.0.0.0:3000:3000" in _ports(opened)["grafana"]                     # the opt-in
    assert "127.0.0.1:1883:1883" in _ports(opened)["mosquitto"]                  # plain MQTT never opens up


def test_mqtt_tls_is_configured_with_certificates_from_the_script(tmp_path):
    conf = (COMPOSE / "mosquitto" / "mosquitto.conf").read_text()
    tls = conf[conf.index("listener 8883"):conf.index("listener 1883")]
    for key in ("cafile", "certfile", "keyfile", "tls_version"):
        assert re.search(rf"^{key} \S+", tls, re.M), key
    assert re.search(r"^allow_anonymous false$", conf, re.M) and re.search(r"^per_listener_settings false$", conf, re.M)
    import subprocess
    out = tmp_path / "certs"
    made = subprocess.run(["sh", str(COMPOSE / "make-certs.sh"), "gateway.example", "10.0.0.5"],
                          env={"PATH": "/usr/bin:/bin", "CERTS_DIR": str(out)}, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    check = subprocess.run(["openssl", "verify", "-CAfile", str(out / "ca.crt"), str(out / "server.crt")],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    text = subprocess.run(["openssl", "x509", "-in", str(out / "server.crt"), "-noout", "-text"],
                          capture_output=True, text=True).stdout
    assert "DNS:gateway.example" in text and "IP Address:10.0.0.5" in text
    assert (out / "server.key").stat().st_mode & 0o077 == 0 and (out / "ca.key").stat().st_mode & 0o077 == 0
    es = yaml.safe_load(FILE.read_text())["services"]["mosquitto"]
    assert "./mosquitto/certs:/mosquitto/certs:ro" in es["volumes"]


def test_grafana_reads_and_edgesieve_writes_with_their_own_tokens_never_the_admin_one(compose):
    s = compose["services"]
    assert "INFLUX_TOKEN" not in s["grafana"]["environment"] and "INFLUX_TOKEN" not in s["edgesieve"]["environment"]
    assert s["edgesieve"]["environment"]["INFLUX_TOKEN_FILE"] == "/tokens/write.token"
    assert "edgesieve-token:/tokens:ro" in s["edgesieve"]["volumes"] and "grafana-token:/tokens:ro" in s["grafana"]["volumes"]
    script = (COMPOSE / "influxdb" / "tokens.sh").read_text()
    assert "--read-bucket" in script and "/tokens/grafana/read.token" in script
    assert "--write-bucket" in script and "/tokens/edgesieve/write.token" in script
    assert "./influxdb/tokens.sh:/docker-entrypoint-initdb.d/tokens.sh:ro" in s["influxdb"]["volumes"]
    assert s["influxdb"]["environment"]["OWNED_DIRS"].split() == ["influxdb:/tokens/grafana", "influxdb:/tokens/edgesieve"]
    assert {"grafana-token:/tokens/grafana", "edgesieve-token:/tokens/edgesieve"} <= set(s["influxdb"]["volumes"])


def _run_entrypoint(service, compose, env_values):
    """The service's entrypoint as compose runs it (check-secrets.sh in front of the image's command)."""
    import subprocess
    svc = compose["services"][service]
    entry = svc["entrypoint"]
    assert entry[:2] == ["/bin/sh", entry[1]] and entry[1].endswith("check-secrets.sh")
    env = {"PATH": "/usr/bin:/bin", **{k: str(v) for k, v in svc["environment"].items()}, **env_values}
    env.pop("WAIT_FOR_FILES", None), env.pop("OWNED_DIRS", None)     # the container's volumes, not this host's
    return subprocess.run(["sh", str(COMPOSE / "check-secrets.sh"), "echo", "started"], env=env,
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("service, secret", [("influxdb", "DOCKER_INFLUXDB_INIT_PASSWORD"),
                                             ("influxdb", "DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"),
                                             ("grafana", "GF_SECURITY_ADMIN_PASSWORD"), ("edgesieve", "MQTT_PASSWORD")])
def test_entrypoints_refuse_the_placeholder_passwords(compose, service, secret):
    placeholder = compose["services"][service]["environment"][secret]
    assert placeholder.startswith("change-me")                                     # what .env.example ships
    refused = _run_entrypoint(service, compose, {})
    assert refused.returncode == 78 and "started" not in refused.stdout
    assert f"refusing to start: {secret} is still the placeholder '{placeholder}'" in refused.stderr
    assert "Set it in compose/.env" in refused.stderr
    real = {k: "0f3a9c1e5b7d2468ace13579bdf02468" for k in compose["services"][service]["environment"]
            if str(compose["services"][service]["environment"][k]).startswith("change-me")}
    ok = _run_entrypoint(service, compose, real)
    assert ok.returncode == 0 and ok.stdout.strip() == "started", ok.stderr
    assert "0f3a9c1e" not in ok.stderr                                              # a real secret is never echoed


def test_mosquitto_entrypoint_refuses_placeholders_and_missing_certificates(tmp_path):
    import subprocess

    from tests.support.stack_broker import PATH, stack_layout
    env = env_example()

    def start(root, **values):
        return subprocess.run(["sh", str(root / "config" / "entrypoint.sh")], capture_output=True, text=True, timeout=30,
                              env={"PATH": PATH, "MOSQUITTO_DIR": str(root), **values})
    root = stack_layout(tmp_path / "a", {})
    r = start(root, MQTT_EDGESIEVE_PASSWORD=env["MQTT_EDGESIEVE_PASSWORD"], MQTT_SIMULATOR_PASSWORD="s1m-Secret-77")
    assert r.returncode == 78
    assert "refusing to start: MQTT_EDGESIEVE_PASSWORD is still the placeholder 'change-me-edgesieve'" in r.stderr
    assert not (root / "data" / "passwd").exists()                                 # nothing was written
    r = start(root, MQTT_EDGESIEVE_PASSWORD="es-Secret-1")
    assert r.returncode == 78 and "MQTT_SIMULATOR_PASSWORD is not set" in r.stderr
    bare = stack_layout(tmp_path / "b", {}, certs=False)
    r = start(bare, MQTT_EDGESIEVE_PASSWORD="es-Secret-1", MQTT_SIMULATOR_PASSWORD="s1m-Secret-77")
    assert r.returncode == 78 and "certs/ca.crt is missing" in r.stderr and "make-certs.sh" in r.stderr


@pytest.fixture
def stack(tmp_path):
    from tests.support.mosquitto import available
    from tests.support.stack_broker import StackBroker
    if not available():
        pytest.skip("mosquitto is not installed (apt-get install mosquitto mosquitto-clients)")
    broker = StackBroker(tmp_path, {"edgesieve": "es-Secret-1", "simulator": "s1m-Secret-2"},
                         {"pump01": "pump01-Secret", "pump02": "pump02-Secret"})
    yield broker
    broker.close()


def _client(stack, user, password, tls=True):
    import paho.mqtt.client as mqtt
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.username_pw_set(user, password)
    got, subscribed, connected = [], [], []
    c.on_message = lambda c, u, m: got.append((m.topic, m.payload.decode()))
    c.on_subscribe = lambda *a: subscribed.append(a)
    c.on_connect = lambda c, u, f, rc, p: connected.append(rc)
    if tls:
        c.tls_set(ca_certs=str(stack.ca))
    c.connect("localhost" if tls else "127.0.0.1", stack.tls_port if tls else stack.port)
    c.loop_start()
    _wait(lambda: connected)
    c.got, c.subscribed, c.refused = got, subscribed, connected[0].is_failure
    return c


def _wait(cond, timeout=10.0):
    import time
    end = time.monotonic() + timeout
    while time.monotonic() < end and not cond():
        time.sleep(0.02)
    return cond()


def _subscribe(c, *topics):
    for t in topics:
        c.subscribe(t, qos=1)
    assert _wait(lambda: len(c.subscribed) >= len(topics))


def test_the_shipped_acl_lets_a_device_publish_and_read_only_its_own_topics(stack):
    import time
    edge = _client(stack, "edgesieve", "es-Secret-1", tls=False)                   # plain listener, loopback
    pump01 = _client(stack, "pump01", "pump01-Secret")                              # devices: TLS
    try:
        assert not edge.refused and not pump01.refused
        _subscribe(edge, "sensors/#")
        _subscribe(pump01, "alerts/+/pump01", "alerts/+/pump02", "commands/+/pump01/#", "commands/+/pump02/#",
                   "sensors/#")
        pump01.publish("sensors/plant1/pump01/pump", "own", qos=1).wait_for_publish(5)
        pump01.publish("sensors/plant1/pump02/pump", "as another device", qos=1).wait_for_publish(5)
        pump01.publish("alerts/plant1/pump02", "forged alert", qos=1).wait_for_publish(5)
        for topic in ("alerts/plant1/pump01", "alerts/plant1/pump02", "commands/plant1/pump01/reset",
                      "commands/plant1/pump02/reset"):
            edge.publish(topic, "from edgesieve", qos=1).wait_for_publish(5)
        assert _wait(lambda: len(pump01.got) >= 2 and edge.got)
        time.sleep(0.5)                                                              # anything else would be here now
        assert edge.got == [("sensors/plant1/pump01/pump", "own")]
        assert sorted(pump01.got) == [("alerts/plant1/pump01", "from edgesieve"),
                                      ("commands/plant1/pump01/reset", "from edgesieve")]
    finally:
        edge.loop_stop(), pump01.loop_stop()
    wrong = _client(stack, "pump01", "pump02-Secret")
    anonymous = _client(stack, "", "")
    wrong.loop_stop(), anonymous.loop_stop()
    assert wrong.refused and anonymous.refused
