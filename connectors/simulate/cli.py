"""``edgesieve simulate``: devices that publish readings or camera frames to an MQTT broker."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from pipeline.cli import duration_arg

from .encode import CODECS
from .simulator import DeviceGroup, Simulator, print_publisher

log = logging.getLogger("edgesieve.simulate")

EPILOG = """examples:
  edgesieve simulate --devices 5 --rate 2                     # 5 pumps (SKAB data when present), json, 2 msg/s each
  edgesieve simulate --profile env --devices 20 --codec senml --batch-size 10 --rate 0.5
  edgesieve simulate --profile camera --devices 2 --rate 10   # frames (.npy) from the video, or moving shapes
  edgesieve simulate --print --count 3 --seed 1 --start 1767225600   # show payloads, publish nothing

Payloads are what the mqtt source decodes with the same codec; topics follow --topic with {site}, {device}
and {kind}. The password is read from $MQTT_PASSWORD or --password-file, never from the command line."""


def _start(args, group: DeviceGroup) -> float | None:
    """``--start``, or a start in the past when event time runs ahead of the clock: readings stamped in the future
    are dead-lettered by windows (``max_future``), so a fast replay should end about now, not start now."""
    if args.start is not None or not args.interval or args.rate <= 0:
        return args.start
    per_message = 1 if group.codec == "frame" else group.batch_size
    gain = per_message * args.interval - 1 / args.rate       # event-time seconds gained per message over the clock
    if gain <= 0:
        return None
    messages = args.count if args.count is not None else (args.duration * args.rate if args.duration else None)
    if messages is None:
        log.warning("event time runs %.0fx faster than the clock and the run is unbounded: readings will be stamped "
                    "in the future (windows dead-letter those beyond max_future); give --for, --count or --start",
                    per_message * args.interval * args.rate)
        return None
    return time.time() - messages * gain


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgesieve simulate", description="Simulated devices publishing over MQTT.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=os.environ.get("MQTT_URL", "mqtt://127.0.0.1:1883"),
                   help="broker, mqtt://host:port or mqtts://host:port (default: $MQTT_URL or mqtt://127.0.0.1:1883)")
    p.add_argument("--profile", choices=["pump", "env", "camera"], default="pump",
                   help="pump: SKAB-like pump readings; env: temperature, humidity, CO2 per room; camera: frames")
    p.add_argument("--devices", type=int, default=3, help="number of devices (default 3)")
    p.add_argument("--rate", type=float, default=1.0, help="messages per second per device; 0 = as fast as possible")
    p.add_argument("--codec", choices=CODECS, default=None, help="payload format (default: json, or frame for cameras)")
    p.add_argument("--batch-size", type=int, default=10, help="readings per message for json-batch and senml (default 10)")
    p.add_argument("--topic", default="sensors/{site}/{device}/{kind}", help="topic layout (default sensors/{site}/{device}/{kind})")
    p.add_argument("--site", default="plant1", help="the {site} topic level")
    p.add_argument("--kind", default=None, help="the {kind} topic level (default: the profile)")
    p.add_argument("--prefix", default=None, help="device name prefix (default pump, room or cam)")
    p.add_argument("--source", choices=["auto", "skab", "generator", "video", "shapes"], default="auto",
                   help="data: SKAB files or a video when present (auto), else generated readings / moving shapes")
    p.add_argument("--skab-dir", type=Path, default=None, help="SKAB data folder (default ../shared/data/skab)")
    p.add_argument("--video", type=Path, default=None, help="video file for cameras (default ../shared/data/video/vtest.avi)")
    p.add_argument("--frame-size", default="192x144", help="frame width x height (default 192x144)")
    p.add_argument("--color", action="store_true", help="send BGR frames instead of grayscale")
    p.add_argument("--inject", type=float, default=0.002, help="chance an injected anomaly starts at a reading (default 0.002; 0 = none)")
    p.add_argument("--for", dest="duration", type=duration_arg, default=None, metavar="DURATION",
                   help="stop after this long: seconds or 30s, 1m, 1h")
    p.add_argument("--count", type=int, default=None, help="stop after this many messages per device")
    p.add_argument("--seed", type=int, default=0, help="random seed: same seed, same data (default 0)")
    p.add_argument("--interval", type=duration_arg, default=None,
                   help="event-time seconds between readings (default 1 / (rate x batch size): real time); "
                        "e.g. --rate 50 --interval 1 replays 1 Hz data 50x faster")
    p.add_argument("--start", type=float, default=None,
                   help="event time of the first reading (default: now; when --interval runs event time faster than "
                        "the clock and --for or --count bounds the run, early enough that the last reading is about now)")
    p.add_argument("--qos", type=int, choices=[0, 1, 2], default=1, help="publish QoS (default 1)")
    p.add_argument("--protocol", choices=["5", "3.1.1"], default="5", help="MQTT version (default 5)")
    p.add_argument("--client-id", default="", help="MQTT client id (default: assigned by the broker)")
    p.add_argument("--username", default=os.environ.get("MQTT_USERNAME"), help="user name (default $MQTT_USERNAME)")
    p.add_argument("--password-file", default=None, help="file whose first line is the password (else $MQTT_PASSWORD)")
    p.add_argument("--ca-file", default=None, help="CA certificate (PEM) for mqtts://")
    p.add_argument("--insecure", action="store_true", help="mqtts:// without hostname verification (testing only)")
    p.add_argument("--truth", type=Path, default=None, help="write the ground truth (anomalous readings, true counts) as NDJSON")
    p.add_argument("--print", dest="dry_run", action="store_true", help="print topics and payloads instead of publishing")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def _frame_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"edgesieve simulate: --frame-size {text!r}: write WIDTHxHEIGHT, e.g. 192x144") from None
    if not (8 <= w <= 4096 and 8 <= h <= 4096):
        raise SystemExit(f"edgesieve simulate: --frame-size {text!r}: each side must be 8..4096 pixels")
    return w, h


def _password(args) -> str | None:
    if args.password_file:
        try:
            return Path(args.password_file).read_text().splitlines()[0]
        except (OSError, IndexError) as exc:
            raise SystemExit(f"edgesieve simulate: cannot read --password-file {args.password_file}: "
                             f"{type(exc).__name__}") from None
    return os.environ.get("MQTT_PASSWORD")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    if args.devices < 1 or args.rate < 0 or args.batch_size < 1 or not (0 <= args.inject <= 1):
        print("edgesieve simulate: --devices and --batch-size must be >= 1, --rate >= 0, --inject in [0, 1]", file=sys.stderr)
        return 2
    if args.duration is None and args.count is None and args.dry_run:
        args.count = 1
    try:
        group = DeviceGroup(profile=args.profile, devices=args.devices, rate=args.rate, codec=args.codec,
                            batch_size=args.batch_size, source=args.source, topic=args.topic, site=args.site,
                            prefix=args.prefix, kind=args.kind, inject=args.inject, frame_size=_frame_size(args.frame_size),
                            gray=not args.color, skab_dir=args.skab_dir, video=args.video,
                            interval=args.interval)
    except (ValueError, FileNotFoundError) as exc:
        print(f"edgesieve simulate: {exc}", file=sys.stderr)
        return 2
    truth_file = open(args.truth, "w") if args.truth else None
    truth = (lambda rec: truth_file.write(json.dumps(rec) + "\n")) if truth_file else None
    sim = Simulator([group], seed=args.seed, start_ts=_start(args, group), truth=truth)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    publisher = None
    try:
        if args.dry_run:
            publish = print_publisher(sys.stdout)
        else:
            from .publisher import Publisher

            try:
                publisher = Publisher(args.url, client_id=args.client_id, qos=args.qos, protocol=args.protocol,
                                      username=args.username, password=_password(args), ca_file=args.ca_file,
                                      insecure=args.insecure)
            except (ConnectionError, ValueError) as exc:
                print(f"edgesieve simulate: {exc}", file=sys.stderr)
                return 1
            publish = publisher.publish
        if not args.quiet:
            log.info("%d %s device(s) from %s, codec %s, %s msg/s each -> %s", group.devices, group.profile,
                     group.source, group.codec, group.rate or "max", "stdout" if args.dry_run else args.url)
        try:
            stats = sim.run(publish, duration=args.duration, count=args.count, stop=stop)
        except BrokenPipeError:   # --print piped into head
            sys.stdout = None
            return 0
    finally:
        if publisher is not None:
            publisher.close()
        if truth_file:
            truth_file.close()
    summary = stats.as_dict()
    print(f"simulate: {json.dumps(summary)}", file=sys.stderr)
    return 0
