"""``edgesieve demo``: the whole product on one machine, with nothing to install but edgesieve.

An embedded MQTT broker (Mosquitto when installed, else amqtt in-process), simulated pumps replaying SKAB
(``../shared/data/skab``, else generated readings with injected faults) and cameras replaying a video
(``../shared/data/video/vtest.avi`` through OpenCV, else generated moving shapes), and the pipeline
``examples/demo/demo.yaml``: anomaly detection with alerts back over MQTT, frame_diff -> onnx with the
redundancy cache, 10 s aggregates to the local SQLite store (and InfluxDB with ``--influx-url``).
A live view while it runs, then a summary and a PNG report.

When a stage type the demo needs is not installed, ``edgesieve demo`` runs the quickstart instead
(``--quickstart`` asks for it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import yaml

from pipeline.redact import mask_url_credentials
from pipeline.cli import duration_arg

ROOT = Path(__file__).resolve().parents[3]
if not (ROOT / "examples").is_dir() and (Path.cwd() / "examples").is_dir():   # installed, not a checkout (e.g. /app)
    ROOT = Path.cwd()
DEMO_FILE = ROOT / "examples" / "demo" / "demo.yaml"
NEEDS = {"sources": ["mqtt"], "stages": ["anomaly", "frame_diff", "onnx", "filter", "map", "window"],
         "sinks": ["sqlite", "mqtt", "file"]}


def missing_types() -> list[str]:
    from pipeline import registry

    return [f"{kind[:-1]} {t}" for kind, names in NEEDS.items() for t in names if t not in registry.KINDS[kind]]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgesieve demo", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--for", dest="duration", type=duration_arg, default=None, metavar="DURATION",
                   help="stop after this long: seconds or 30s, 2m (default: run until Ctrl-C)")
    p.add_argument("--out", default="out/demo", help="folder for the store, anomalies, summary and report (default out/demo)")
    p.add_argument("--pumps", type=int, default=4, help="simulated pumps (default 4)")
    p.add_argument("--cameras", type=int, default=2, help="simulated cameras (default 2)")
    p.add_argument("--speed", type=float, default=20.0,
                   help="pump readings per second per pump; SKAB is 1 Hz data, so 20 replays it 20x faster (default 20)")
    p.add_argument("--fps", type=float, default=10.0, help="camera frames per second (default 10)")
    p.add_argument("--seed", type=int, default=0, help="simulator seed (default 0)")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data",
                   help="folder with skab/ and video/vtest.avi (default ../shared/data); generated data when absent")
    p.add_argument("--broker", choices=["auto", "mosquitto", "amqtt"], default="auto",
                   help="embedded broker: Mosquitto when installed, else amqtt (default auto)")
    p.add_argument("--mqtt-url", default=None, help="use this running broker instead of an embedded one")
    p.add_argument("--influx-url", default=None, help="also send the aggregates to InfluxDB (through the outbox)")
    p.add_argument("--influx-org", default=os.environ.get("INFLUX_ORG", "edgesieve"))
    p.add_argument("--influx-bucket", default=os.environ.get("INFLUX_BUCKET", "demo"))
    p.add_argument("--no-live", action="store_true", help="no live view (for logs and CI)")
    p.add_argument("--quickstart", action="store_true", help="run the small quickstart pipeline instead")
    return p


def build_spec(out_dir: Path, broker, influx: dict | None):
    """The demo pipeline, with InfluxDB added when asked."""
    from pipeline.loader import parse_pipeline

    doc = yaml.safe_load(DEMO_FILE.read_text())
    if influx:
        doc["sinks"].append({"id": "cloud", "type": "influxdb", "inputs": ["pump_windows", "camera_windows"],
                             "url": influx["url"], "org": influx["org"], "bucket": influx["bucket"],
                             "token_env": "INFLUX_TOKEN", "measurement": "demo", "window": "10s",
                             "outbox": str(out_dir / "state" / "outbox.db")})
    env = dict(os.environ, MQTT_URL=broker.url, MQTT_PROTOCOL=broker.protocol, OUT_DIR=str(out_dir),
               MODELS_DIR=str(ROOT / "examples" / "models"))
    text = "# generated from examples/demo/demo.yaml\n" + yaml.safe_dump(doc, sort_keys=False)
    (out_dir / "pipeline.yaml").write_text(text)
    return parse_pipeline(out_dir / "pipeline.yaml", env=env)


class AlertListener:
    """Subscribes to the alerts the pipeline publishes and to its status topic."""

    def __init__(self, broker, stats):
        import paho.mqtt.client as mqtt

        from connectors.simulate.publisher import split_url

        _, host, port = split_url(broker.url)
        self.online = threading.Event()
        v5 = broker.protocol == "5"
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="edgesieve-demo-watch",
                             protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)

        def on_message(c, u, m):
            if m.topic.startswith("alerts/"):
                stats.on_alert(m.topic, m.payload)
            elif b"online" in m.payload:
                self.online.set()
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe(
            [("alerts/#", 1), ("edgesieve/+/demo/status", 1), ("edgesieve/demo/status", 1)])  # {node}/{pipeline} or a set topic
        self.c.on_message = on_message
        self.c.connect(host, port)
        self.c.loop_start()

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    absent = missing_types()
    if args.quickstart or absent:
        if absent and not args.quickstart:
            print(f"edgesieve demo: the full demo needs {', '.join(absent)}, not installed here: "
                  "running the quickstart instead", file=sys.stderr)
        from .quickstart import main as quickstart

        return quickstart((["--for", str(args.duration)] if args.duration else []))
    if args.pumps < 0 or args.cameras < 0 or args.pumps + args.cameras == 0 or args.speed <= 0 or args.fps <= 0:
        print("edgesieve demo: need --pumps/--cameras >= 0 (not both 0), --speed and --fps > 0", file=sys.stderr)
        return 2
    if args.influx_url and not os.environ.get("INFLUX_TOKEN"):
        print("edgesieve demo: --influx-url needs the token in the environment variable INFLUX_TOKEN", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    return _run(args)


def _run(args) -> int:
    from connectors.simulate import DeviceGroup, Simulator
    from connectors.simulate.publisher import Publisher

    from pipeline.errors import ConfigError
    from pipeline.progress import print_summary
    from pipeline.runtime import Pipeline
    from .broker import EmbeddedBroker
    from .report import write_report
    from .view import DemoStats, LiveDemoView, human_bytes

    out_dir = Path(args.out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("aggregates.db", "aggregates.db-wal", "aggregates.db-shm", "anomalies.ndjson", "state/demo.checkpoint",
                  "state/demo.checkpoint-wal", "state/demo.checkpoint-shm"):
        (out_dir / stale).unlink(missing_ok=True)
    shutil.rmtree(out_dir / "state" / "journal", ignore_errors=True)     # the checkpoint's other half: a fresh run
    try:
        broker = EmbeddedBroker.choose(args.mqtt_url, args.broker)
    except RuntimeError as exc:
        print(f"edgesieve demo: {exc}", file=sys.stderr)
        return 1
    listener = publisher = None
    try:
        influx = {"url": args.influx_url, "org": args.influx_org, "bucket": args.influx_bucket} if args.influx_url else None
        try:
            pipeline = Pipeline(build_spec(out_dir, broker, influx))
        except ConfigError as exc:
            print(f"edgesieve demo: {out_dir / 'pipeline.yaml'} cannot run:", file=sys.stderr)
            for problem in exc.problems:
                print(f"  {problem}", file=sys.stderr)
            return 1
        groups = []
        if args.pumps:
            # injected faults from the 250th reading of each pump on, about one per 100 readings: the detectors
            # (calibrated after ~220 readings, examples/demo/demo.yaml) see a few in a 20 s run at the default speed
            groups.append(DeviceGroup(profile="pump", devices=args.pumps, rate=args.speed, interval=1.0, codec="json",
                                      skab_dir=args.data / "skab", inject=0.01, inject_after=250))
        if args.cameras:
            groups.append(DeviceGroup(profile="camera", devices=args.cameras, rate=args.fps,
                                      video=args.data / "video" / "vtest.avi"))
        # pump event time runs --speed times faster than the clock: start it in the past so that it ends before
        # now (time-series stores show nothing in the future)
        start = time.time() - (args.duration or 600) * args.speed if args.pumps else None
        stats = DemoStats(pipeline, None, out_dir)
        stats.camera_note = camera_note(groups)
        sim = Simulator(groups, seed=args.seed, start_ts=start, truth=stats.on_truth)
        stats.sim = sim
        sources = ", ".join(f"{g.devices} {g.profile}{'s' if g.devices != 1 else ''} from {g.source}" for g in groups)
        title = f"edgesieve demo · {broker.kind} broker (MQTT {broker.protocol}) · {sources}"
        listener = AlertListener(broker, stats)
        publisher = Publisher(broker.url, client_id="edgesieve-demo-devices", qos=1, protocol=broker.protocol)
        stop_sim = threading.Event()

        def publish(topic: str, payload: bytes, props) -> bool:
            sent = publisher.publish(topic, payload, props)
            if topic.endswith("/pump"):
                stats.on_reading(topic.split("/")[2], payload, sent)
            elif sent:
                stats.on_frame(len(payload))
            return sent

        def simulate() -> None:
            listener.online.wait(20)          # the source has subscribed: nothing published is lost
            time.sleep(0.3)
            sim.run(publish, stop=stop_sim)

        sim_thread = threading.Thread(target=simulate, name="demo-devices", daemon=True)
        sim_thread.start()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda signum, frame: pipeline.stop(signal.Signals(signum).name))
        view = LiveDemoView(stats, title, args.duration, live=not args.no_live)
        try:
            summary = pipeline.run(duration=args.duration, on_tick=view.update)
        finally:
            stop_sim.set()
            sim_thread.join(10)
            view.close()
        stats.sample()
        print_summary(summary)
        bytes_out = stats.samples[-1]["bytes_out"]
        report = report_png(write_report, stats, out_dir / "report.png", title, bytes_out)
        result = _summary(stats, summary, broker, sources, out_dir, report, bytes_out, influx)
        (out_dir / "summary.json").write_text(json.dumps(result, indent=2))
        _print_demo_summary(result, human_bytes)
        return 1 if summary.error else 0
    finally:
        if publisher is not None:
            publisher.close(timeout=2)
        if listener is not None:
            listener.close()
        broker.close()


NO_MATPLOTLIB = "(no PNG report: matplotlib is not installed; `./dev setup` or `pip install -e '.[demo]'` adds it)"


def report_png(write_report, stats, path: Path, title: str, bytes_out: int) -> str:
    """The report's path, or what to install to get it."""
    try:
        return str(write_report(stats, path, title, bytes_out))
    except ImportError:
        return NO_MATPLOTLIB


def camera_note(groups) -> str | None:
    """What the cameras show, said plainly when it is not the sample video (None without cameras)."""
    cams = [g for g in groups if g.profile == "camera"]
    if not cams:
        return None
    g = cams[0]
    if g.source == "video":
        return f"the sample video {g.video.name}"
    import importlib.util

    why = ("OpenCV is not installed: `./dev setup` or `pip install opencv-python-headless` adds it"
           if importlib.util.find_spec("cv2") is None else f"no video at {g.video}")
    return f"GENERATED moving shapes, not the sample video ({why})"


def _summary(stats, summary, broker, sources, out_dir, report, bytes_out, influx) -> dict:
    last = stats.samples[-1]
    with stats.lock:
        devices = sorted(set(stats.readings) | set(stats.flagged) | set(stats.alerts) | set(stats.truth))
        per_device = {d: {"flagged": stats.flagged[d], "alerts": stats.alerts[d], "true": stats.truth[d]} for d in devices}
    return {"seconds": round(summary.seconds, 2), "stopped_by": summary.stopped_by, "error": summary.error,
            "broker": broker.kind, "mqtt_protocol": broker.protocol, "devices": sources,
            "messages_published": last["messages"], "readings": last["readings"], "frames": last["frames"],
            "records_received": last["received"], "frames_skipped": last["reused"], "frames_in": last["frames_in"],
            "skip_rate": round(last["skip_rate"], 4), "cache_hit_rate": round(last["cache_hit_rate"], 4),
            "anomalies": per_device, "aggregates": last["aggregates"], "bytes_in": last["bytes_in"],
            "reading_bytes": last["reading_bytes"], "frame_bytes": last["frame_bytes"], "cameras_show": stats.camera_note,
            "bytes_out": bytes_out, "dead_lettered": last["dead_lettered"],
            "store": str(out_dir / "aggregates.db"), "influxdb": mask_url_credentials(influx["url"]) if influx else None,
            "report": str(report)}


def _print_demo_summary(r: dict, human_bytes) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"edgesieve demo: {r['seconds']:.0f} s, {r['devices']}", title_justify="left", show_header=False)
    t.add_column(style="cyan", no_wrap=True)
    t.add_column()
    t.add_row("devices sent", f"{r['messages_published']:,} messages: {r['readings']:,} pump readings, {r['frames']:,} frames")
    t.add_row("frames skipped", f"{r['skip_rate']:.0%} ({r['frames_skipped']:,} of {r['frames_in']:,}) by frame_diff")
    t.add_row("cache hit rate", f"{r['cache_hit_rate']:.0%} of the frames that reached the model")
    for d, a in r["anomalies"].items():
        t.add_row(f"anomalies {d}", f"{a['flagged']:,} readings flagged, {a['alerts']:,} alerts over MQTT "
                  f"({a['true']:,} truly anomalous readings)")
    if r["cameras_show"]:
        t.add_row("cameras show", r["cameras_show"])
    ratio = f" ({r['reading_bytes'] / r['bytes_out']:,.0f}x less)" if r["bytes_out"] and r["reading_bytes"] else ""
    t.add_row("readings → out", f"{human_bytes(r['reading_bytes'])} of pump readings → {human_bytes(r['bytes_out'])} "
              f"of aggregates and alerts sent{ratio}")
    t.add_row("frames", f"{human_bytes(r['frame_bytes'])} of camera frames, analysed on the gateway; none is uploaded")
    t.add_row("aggregates", f"{r['aggregates']:,} windows in {r['store']}" + (f" and InfluxDB {r['influxdb']}" if r["influxdb"] else ""))
    t.add_row("report", r["report"])
    Console(file=sys.stderr).print(t)
