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
    for var in ("MQTT_EDGESIEVE_PASSWORD", "MQTT_DEVICES_PASSWORD", "INFLUX_TOKEN", "INFLUX_ADMIN_PASSWORD",
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
        try:
            parse_pipeline(path, env=env)
        except ConfigError as exc:
            pytest.fail(f"{src} does not validate:\n" + "\n".join(map(str, exc.problems)))


def test_grafana_provisioning_matches_the_dashboard(compose):
    prov = COMPOSE / "grafana" / "provisioning"
    sources = {d["uid"]: d for d in yaml.safe_load((prov / "datasources" / "datasources.yaml").read_text())["datasources"]}
    influx = next(d for d in sources.values() if d["type"] == "influxdb")
    assert influx["jsonData"]["version"] == "Flux" and "token" in influx["secureJsonData"]
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
    assert pw in entry and "mosquitto_passwd -b" in entry
    users = set(re.findall(r"^user (\S+)", (COMPOSE / "mosquitto" / "acl").read_text(), re.M))
    assert users == {"edgesieve", "devices"}


def test_deploy_doc_walks_through_the_stack():
    doc = (ROOT / "docs" / "deploy.md").read_text()
    assert doc.startswith("# Deploy with docker compose")
    for needle in ("cp .env.example .env", "docker compose up -d --build", "--profile simulate", "mosquitto_sub",
                   "http://localhost:3000", "docker compose down"):
        assert needle in doc, needle
