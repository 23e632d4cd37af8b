"""The three pipelines of issue 16's "Done when", written from docs/ alone (examples/day-one): they validate,
`edgesieve test` shows each doing its job on sample readings, and the first runs end to end on a real Mosquitto."""

from __future__ import annotations

import io
import json
import math
import sqlite3
import time
from pathlib import Path

import pytest

from pipeline.loader import parse_pipeline
from pipeline.trial import run_test
from tests.support.cli import cli_env, start_edgesieve
from tests.support.clients import Client

ROOT = Path(__file__).resolve().parents[2]
DAY_ONE = ROOT / "examples" / "day-one"
T0 = 1_700_000_040.0          # a minute boundary


def spec(name, tmp_path, **env):
    return parse_pipeline(DAY_ONE / name, env={"OUT_DIR": str(tmp_path), **env})


def trial(name, tmp_path, records) -> str:
    inp = tmp_path / "in.ndjson"
    inp.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = io.StringIO()
    assert run_test(spec(name, tmp_path), samples=0, input_file=str(inp), out=out) == 0
    return out.getvalue()


def _upto_next(text, title):
    part = text.split(title, 1)[1]
    nxt = [i for i in (part.find("\nstage '"), part.find("\nsink '"), part.find("\ndead letters")) if i > 0]
    return [json.loads(line) for line in part[:min(nxt) if nxt else None].splitlines() if line.startswith("  {")]


@pytest.mark.parametrize("path", sorted(DAY_ONE.glob("*.yaml")), ids=lambda p: p.name)
def test_day_one_examples_validate(path, tmp_path):
    assert spec(path.name, tmp_path).sources


def test_hopping_routing_units(tmp_path):
    recs = [{"ts": T0 + 10 * i, "tags": {"site": "p1", "kind": "pump", "device": "pump7"},
             "fields": {"temperature": 212.0, "pressure": 14.5038, "voltage": 230.0, "current": 4.0}} for i in range(30)]
    recs += [{"ts": T0 + 15 * i, "tags": {"site": "p1", "kind": "fan", "device": "fan2"}, "fields": {"rpm": 1000.0 + i}}
             for i in range(20)]
    text = trial("hopping-routing-units.yaml", tmp_path, sorted(recs, key=lambda r: r["ts"]))
    pumps = _upto_next(text, "sink 'pump_store'")
    fans = _upto_next(text, "sink 'fan_store'")
    assert pumps and fans and all(r["tags"]["device"] == "pump7" for r in pumps)
    assert all(r["tags"]["device"] == "fan2" for r in fans)
    # °F -> °C, psi -> bar, derived power; hopping: 5-minute windows starting every minute
    assert all(r["fields"]["temperature_mean"] == pytest.approx(100.0) for r in pumps)
    assert all(r["fields"]["pressure_mean"] == pytest.approx(1.0, abs=1e-4) for r in pumps)
    assert all(r["fields"]["power_kw_mean"] == pytest.approx(0.92) for r in pumps)
    starts = [r["ts"] for r in pumps]
    assert starts == sorted(starts) and set(map(lambda a, b: b - a, starts, starts[1:])) == {60.0}
    full = [r for r in pumps if r["ts"] >= T0 and r["ts"] + 300 <= T0 + 300]
    assert [r["fields"]["count"] for r in full] == [30]           # the window [T0, T0+5m) holds every reading


def test_anomaly_alerts(tmp_path):
    recs = []
    for i in range(400):
        spike = 250 <= i < 260
        recs.append({"ts": T0 + i, "tags": {"site": "p1", "device": "pump7"},
                     "fields": {"temperature": (90.0 if spike else 20.0 + math.sin(i / 5)),
                                "vibration": (5.0 if spike else 0.2 + 0.01 * math.cos(i / 3))}})
    text = trial("anomaly-alerts.yaml", tmp_path, recs)
    alerts = _upto_next(text, "sink 'alerts'")
    ends = _upto_next(text, "sink 'episode_ends'")
    assert alerts and all(r["fields"]["anomaly_alert"] in (1, True) for r in alerts)
    assert any(250 <= r["ts"] - T0 < 260 for r in alerts)
    assert ends and all(r.get("event") == "anomaly_end" for r in ends)


def _rows(folder) -> int:
    try:
        with sqlite3.connect(folder / "minute-aggregates.db") as db:
            return db.execute("SELECT count(*) FROM points").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_mqtt_to_sqlite_over_mosquitto(mqtt_broker, prefix, tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text((DAY_ONE / "mqtt-to-sqlite.yaml").read_text().replace('"sensors/{site}/{device}"',
                                                                       f'"{prefix}/{{site}}/{{device}}"'))
    env = cli_env(MQTT_URL=mqtt_broker.url, OUT_DIR=str(tmp_path))
    status = Client(mqtt_broker).subscribe("edgesieve/+/+/status")
    run = start_edgesieve("run", str(f), "--for", "60s", env=env, cwd=tmp_path)
    pub = Client(mqtt_broker)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(b"online" in m.payload for m in status.messages):
            assert run.poll() is None
            time.sleep(0.1)
        for i in range(180):   # 3 minutes of event time, tolerant JSON: text, numbers as text, nested
            pub.publish(f"{prefix}/plant1/pump{i % 2}",
                        {"ts": T0 + i, "temperature": str(20 + i % 2), "status": "ok", "env": {"humidity": 40}})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _rows(tmp_path) < 4:      # the first two minutes closed
            time.sleep(0.2)
        run.send_signal(2)     # SIGINT: the last, open window is flushed at the stop
        out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
        pub.close()
    assert run.returncode == 0, err.decode()[-3000:]
    assert "field 'status' is text" in err.decode()          # dropped, counted and said once
    with sqlite3.connect(tmp_path / "minute-aggregates.db") as db:
        rows = [(json.loads(t), ts, json.loads(fields)) for t, ts, fields in
                db.execute("SELECT tags, ts, fields FROM points ORDER BY tags, ts")]
    assert len(rows) == 6, err.decode()[-3000:]                         # 3 minutes x 2 pumps
    for tags, ts, fields in rows:
        assert set(tags) == {"site", "device"} and fields["count"] == 30
        assert fields["temperature_mean"] == (20.0 if tags["device"] == "pump0" else 21.0)
        assert fields["env.humidity_mean"] == 40.0
