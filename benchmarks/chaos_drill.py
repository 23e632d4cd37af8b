"""Chaos drill (issue 11): are the aggregates that leave the site exactly right when everything misbehaves?

One run with a real Mosquitto (persistence on, settings of compose/mosquitto/mosquitto.conf), a real
VictoriaMetrics as the InfluxDB write API, and ``edgesieve run`` (the CLI) as a supervisor would run it.
A publisher sends QoS 1 readings from 60 devices at 1,000 msg/s and logs what the broker acknowledged. During
the run: the broker restarts twice, edgesieve is killed with -9 twice (and restarted), the cloud is down 60 s,
one device holds back 60 s of readings and then flushes them, one device's clock is an hour behind, and one
reading is stamped a year ahead. Afterwards every device's every 10 s window in VictoriaMetrics is compared with
an independent computation from the publisher's log: windows missing, readings lost, counted twice, values wrong.

Then the sustained QoS 1 throughput with ``checkpoint.interval: 30s`` is compared with checkpoints off (the same
backlog drained by the CLI, interleaved runs, best of each).

    python benchmarks/chaos_drill.py                  # the full drill: 3 minutes of chaos, then throughput
    python benchmarks/chaos_drill.py --minutes 1      # shorter, for debugging
    python benchmarks/chaos_drill.py --skip-throughput / --only-throughput

Exit status 0 only when every window is exactly right and the throughput ratio is at least 0.9.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict, deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402

from tests.support.cli import cli_env  # noqa: E402
from tests.support.mosquitto import Mosquitto, free_port  # noqa: E402
from tests.support.victoria import VictoriaMetrics  # noqa: E402

# compose/mosquitto/mosquitto.conf, less what needs the container (listener, passwords, ACLs, log destination)
BROKER_SETTINGS = ["autosave_interval 30", "max_packet_size 2097152", "max_queued_messages 200000",
                   "max_queued_bytes 268435456", "max_inflight_messages 20"]
DEVICES = [f"d{i:02d}" for i in range(60)]
BACKLOG, BEHIND, FUTURE = "d01", "d02", "d03"     # the misbehaving devices
WINDOW = 10.0
TOKEN = "drill-token"
YEAR = 365 * 86400.0


def pipeline_yaml(work: Path, broker: str, cloud: str, checkpoint: str | None) -> str:
    cp = f"checkpoint: {{path: {work / 'state' / 'drill.checkpoint'}, interval: {checkpoint}}}" if checkpoint else ""
    return f"""
pipeline: drill
sources:
  - id: in
    type: mqtt
    url: {broker}
    node: drill-gw
    subscriptions:
      - {{topic_template: "drill/{{site}}/{{device}}", codec: json, qos: 1}}
stages:
  - id: win
    type: window
    inputs: [in]
    size: 10s
    key: [site, device]
    allowed_lateness: 2s
    aggregates: {{v: [sum, max]}}
sinks:
  - id: cloud
    type: influxdb
    inputs: [win]
    url: {cloud}
    org: drill
    bucket: drill
    token_env: INFLUX_TOKEN
    measurement: drill
    window: 10s
    drain_timeout: 30s
runtime:
  state_dir: {work / 'state'}
  dead_letter: {work / 'deadletter.ndjson'}
  {cp}
"""


class Edgesieve:
    """``edgesieve run`` as a subprocess, output to a log file, metrics on a port of its own."""

    def __init__(self, work: Path, pipeline: Path):
        self.work, self.pipeline, self.proc, self.port, self.starts = work, pipeline, None, None, 0

    def start(self) -> None:
        self.port = free_port()
        self.starts += 1
        log = open(self.work / f"edgesieve-{self.starts}.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(self.pipeline),
                                      "--metrics-port", str(self.port)], stdout=log, stderr=subprocess.STDOUT,
                                     env=cli_env(INFLUX_TOKEN=TOKEN), cwd=self.work)
        log.close()
        deadline = time.monotonic() + 60
        logfile = self.work / f"edgesieve-{self.starts}.log"
        # up once it serves metrics and has subscribed (before that, the broker would not keep messages for it)
        while self.metric("in", "out") < 0 or b"subscribed to" not in logfile.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"edgesieve did not start; see {logfile}")
            time.sleep(0.1)

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(120)

    def metric(self, item: str, event: str) -> int:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2).read().decode()
        except OSError:
            return -1
        total = 0
        for line in text.splitlines():
            if line.startswith("edgesieve_records_total{") and f'item="{item}"' in line and f'event="{event}"' in line:
                total += int(float(line.rsplit(" ", 1)[1]))
        return total

    def counters(self) -> dict[str, int]:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2).read().decode()
        except OSError:
            return {}
        out = {}
        for line in text.splitlines():
            if line.startswith("edgesieve_records_total{"):
                labels = dict(kv.split("=", 1) for kv in line[line.index("{") + 1:line.index("}")].split(","))
                out[f"{labels['item'].strip(chr(34))}.{labels['event'].strip(chr(34))}"] = int(float(line.rsplit(" ", 1)[1]))
        return out


class Publisher:
    """60 devices at ``rate`` msg/s, QoS 1, persistent session; keeps every message and whether the broker acked it."""

    def __init__(self, broker: Mosquitto, rate: float, seed: int = 11):
        self.rate, self.rng = rate, random.Random(seed)
        self.log: list[list] = []         # [device, ts, v, acknowledged by the broker]
        self._in_flight: dict[int, int] = {}    # packet id -> index in log (publisher thread only)
        self._acks: deque[tuple[int, bool]] = deque()  # (packet id, ok) from paho's network thread, in order
        self.held: list[tuple[str, float, float]] = []
        self.hold_backlog = threading.Event()
        self.future_once = threading.Event()
        self.stop = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="drill-publisher", protocol=mqtt.MQTTv5)
        self.c.max_inflight_messages_set(20)
        self.c.reconnect_delay_set(0.1, 1.0)
        self.c.on_publish = self._acked
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.c.connect(broker.host, broker.port, clean_start=False, properties=props)
        self.c.loop_start()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _send(self, device: str, ts: float, v: float) -> None:
        # paho keeps a QoS 1 message published while disconnected and sends it after the reconnect
        info = self.c.publish(f"drill/site1/{device}", json.dumps({"ts": ts, "v": v}), qos=1)
        self._in_flight[info.mid] = len(self.log)
        self.log.append([device, ts, v, False])

    def _acked(self, client, userdata, mid, reason_code, properties) -> None:
        self._acks.append((mid, not reason_code.is_failure))     # no lock: paho holds its own here

    def _apply_acks(self) -> None:
        acks = self._acks
        while acks:
            mid, ok = acks.popleft()
            i = self._in_flight.pop(mid, None)
            if i is not None and ok:
                self.log[i][3] = True

    def _run(self) -> None:
        step, i, t0 = 0.01, 0, time.monotonic()
        per_step = self.rate * step
        owed = 0.0
        while not self.stop.is_set():
            owed += per_step
            while owed >= 1:
                owed -= 1
                device = DEVICES[i % len(DEVICES)]
                i += 1
                now = time.time()
                v = round(self.rng.gauss(20.0, 5.0), 3)
                if device == BEHIND:
                    now -= 3600.0
                if device == FUTURE and self.future_once.is_set():
                    self.future_once.clear()
                    now += YEAR
                if device == BACKLOG and self.hold_backlog.is_set():
                    self.held.append((device, now, v))
                    continue
                if device == BACKLOG and self.held:
                    for held in self.held:           # the link is back: the device flushes what it buffered
                        self._send(*held)
                    self.held = []
                self._send(device, now, v)
            self._apply_acks()
            t0 += step
            time.sleep(max(0.0, t0 - time.monotonic()))

    def finish(self, timeout: float = 120) -> int:
        """Stop publishing; wait for the broker's acknowledgements; return how many stay unacknowledged."""
        self.stop.set()
        self.thread.join()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._in_flight:
            time.sleep(0.2)
            self._apply_acks()
        return sum(not m[3] for m in self.log)

    def write_log(self, path: Path) -> None:
        with open(path, "w") as fh:
            for device, ts, v, acked in self.log:
                fh.write(json.dumps({"device": device, "ts": ts, "v": v, "acked": acked}) + "\n")


def expected_windows(log: list[list], now: float) -> tuple[dict, list]:
    """(device, window start) -> [count, sum, max] from the acknowledged readings; and the far-future ones."""
    out: dict = defaultdict(lambda: [0, 0.0, -math.inf])
    future = []
    for device, ts, v, acked in log:
        if not acked:
            continue
        if ts > now + 86400:
            future.append((device, ts, v))
            continue
        w = out[(device, math.floor(ts / WINDOW) * WINDOW)]
        w[0] += 1
        w[1] += v
        w[2] = max(w[2], v)
    return out, future


def landed_windows(vm: VictoriaMetrics) -> tuple[dict, int, int]:
    """(device, window start) -> [count, sum, max] as VictoriaMetrics has them; points stored twice; conflicts."""
    got: dict = {}
    twice = conflicting = 0
    samples = vm.samples('{__name__=~"drill_.*"}', start=0, end=time.time() + 2 * YEAR)
    field_index = {"drill_count": 0, "drill_v_sum": 1, "drill_v_max": 2}
    for (name, labels), points in samples.items():
        if name not in field_index:
            continue
        device = dict(labels)["device"]
        by_ts = defaultdict(list)
        for ts, value in points:
            by_ts[ts].append(value)
        for ts, values in by_ts.items():
            if len(values) > 1:
                twice += 1
                conflicting += len(set(values)) > 1
            got.setdefault((device, ts / 1000.0), [None, None, None])[field_index[name]] = values[-1]
    return got, twice, conflicting


def compare(want: dict, got: dict) -> dict:
    missing = [k for k in want if k not in got]
    unexpected = [k for k in got if k not in want]
    lost = sum(want[k][0] for k in missing)
    twice = wrong = 0
    wrong_examples, short = [], []
    lost_by_device: dict = defaultdict(int)
    for k in missing:
        lost_by_device[k[0]] += want[k][0]
    for k in set(want) & set(got):
        wc, ws, wm = want[k]
        gc, gs, gm = got[k]
        gc = int(gc or 0)
        if gc < wc:
            lost += wc - gc
            lost_by_device[k[0]] += wc - gc
            short.append((k, gc, wc))
        elif gc > wc:
            twice += gc - wc
        elif gs is None or gm is None or abs(gs - ws) > 1e-6 * max(1.0, abs(ws)) or abs(gm - wm) > 1e-9:
            wrong += 1
            wrong_examples.append((k, (gc, gs, gm), (wc, ws, wm)))
    per_device = defaultdict(lambda: [0, 0])
    for k in missing:
        per_device[k[0]][0] += 1
    return {"windows_expected": len(want), "windows_missing": len(missing), "windows_unexpected": len(unexpected),
            "readings_expected": sum(w[0] for w in want.values()), "readings_lost": lost,
            "readings_counted_twice": twice, "windows_with_wrong_values": wrong,
            "missing_by_device": dict(sorted(per_device.items(), key=lambda kv: -kv[1][0])[:8]),
            "lost_by_device": dict(sorted(lost_by_device.items(), key=lambda kv: -kv[1])[:8]),
            "short_windows": len(short), "short_examples": sorted(short)[:5],
            "missing_examples": sorted(missing)[:5], "unexpected_examples": sorted(unexpected)[:5],
            "wrong_examples": wrong_examples[:3]}


def chaos(args, work: Path) -> dict:
    total = args.minutes * 60.0
    outage = min(60.0, total / 3)
    events = sorted(e for e in [(0.10 * total, "broker restart"), (0.22 * total, "kill -9 edgesieve"),
                     (0.30 * total, "cloud down"), (0.30 * total + outage, "cloud up"),
                     (0.35 * total, "backlog hold"), (0.35 * total + outage, "backlog flush"),
                     (0.45 * total, "broker restart"), (0.55 * total, "future reading"),
                     (0.72 * total, "kill -9 edgesieve")] if e[1].split()[0] not in args.skip)
    broker = Mosquitto(work / "mosquitto", extra_config=BROKER_SETTINGS).start()
    (work / "vm").mkdir()
    vm = VictoriaMetrics(data_dir=work / "vm").start()
    pipeline = work / "drill.yaml"
    pipeline.write_text(pipeline_yaml(work, broker.url, vm.url, args.checkpoint))
    es = Edgesieve(work, pipeline)
    es.start()
    time.sleep(1.0)
    pub = Publisher(broker, args.rate)
    started = time.monotonic()
    pub.thread.start()
    timeline = []
    try:
        for at, what in events:
            time.sleep(max(0.0, started + at - time.monotonic()))
            timeline.append((round(time.monotonic() - started, 1), what))
            print(f"  {timeline[-1][0]:6.1f}s  {what}", flush=True)
            if what == "broker restart":
                broker.restart()
            elif what == "kill -9 edgesieve":
                es.kill9()
                time.sleep(1.0)
                es.start()
            elif what == "cloud down":
                vm.stop()
            elif what == "cloud up":
                vm.start()
            elif what == "backlog hold":
                pub.hold_backlog.set()
            elif what == "backlog flush":
                pub.hold_backlog.clear()
            elif what == "future reading":
                pub.future_once.set()
        time.sleep(max(0.0, started + total - time.monotonic()))
        unacked = pub.finish()
        published = len(pub.log)
        print(f"  {time.monotonic() - started:6.1f}s  publisher stopped: {published} sent, {unacked} unacknowledged",
              flush=True)
        # Let the pipeline take everything, then a SIGTERM (open windows are flushed, the outbox drains)
        last, deadline = -1, time.monotonic() + 120
        while time.monotonic() < deadline:
            now = es.metric("in", "out") + es.metric("in", "duplicates")
            if now == last:
                break
            last = now
            time.sleep(3.0)
        counters = es.counters()
        rc = es.stop()
        pub.write_log(work / "publisher.ndjson")
        want, future = expected_windows(pub.log, time.time())
        got, twice, conflicting = landed_windows(vm)
        result = compare(want, got)
        future_landed = [k for k in got if k[0] == FUTURE and k[1] > time.time() + 86400]
        dropped = broker.log().count("Outgoing messages are being dropped")
        result.update({"broker_dropped_warnings": dropped, "published": published, "unacknowledged": unacked, "timeline": timeline,
                       "points_stored_twice": twice, "points_stored_twice_with_different_values": conflicting,
                       "future_readings": len(future), "future_windows_landed": len(future_landed),
                       "last_run_counters": {k: v for k, v in counters.items()
                                             if k.split(".")[1] in ("out", "duplicates", "late", "dead_lettered",
                                                                    "future_timestamp", "errors", "checkpoints")
                                             or k.startswith("win.")},
                       "edgesieve_exit": rc, "edgesieve_starts": es.starts})
        return result
    finally:
        pub.stop.set()
        if es.proc and es.proc.poll() is None:
            es.proc.kill()
        pub.c.loop_stop()
        broker.close()
        vm.close()


def prefill(broker: Mosquitto, n: int) -> None:
    """Queue ``n`` QoS 1 readings in the pipeline's persistent session (the broker holds them)."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="drill-filler", protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect(broker.host, broker.port)
    c.loop_start()
    t = time.time() - 3600
    for start in range(0, n, 20_000):        # at most 20,000 outstanding: packet ids must not wrap around
        infos = [c.publish(f"drill/site1/{DEVICES[i % len(DEVICES)]}", json.dumps({"ts": t + i * 0.001, "v": i}), qos=1)
                 for i in range(start, min(n, start + 20_000))]
        for info in infos:
            info.wait_for_publish(60)
    c.disconnect()
    c.loop_stop()


def throughput(args, work: Path) -> dict:
    """Drain the same backlog with checkpoints off and with interval 30s (interleaved); msg/s per run."""
    broker = Mosquitto(work / "mosquitto-tput",
                       extra_config=[*BROKER_SETTINGS, f"max_queued_messages {max(200_000, args.backlog + 1000)}"]).start()
    (work / "vm-tput").mkdir()
    vm = VictoriaMetrics(data_dir=work / "vm-tput").start()
    rates: dict[str, list[float]] = {"off": [], "30s": []}
    try:
        for rnd in range(args.rounds):
            for mode in ("off", "30s"):
                run = work / f"tput-{mode}-{rnd}"
                run.mkdir()
                pipeline = run / "p.yaml"
                pipeline.write_text(pipeline_yaml(run, broker.url, vm.url, None if mode == "off" else "30s"))
                es = Edgesieve(run, pipeline)
                es.start()               # subscribes: the session exists; stop, fill it, start again
                es.stop()
                prefill(broker, args.backlog)
                es.start()
                t0, first = time.monotonic(), None
                while es.metric("in", "out") < args.backlog and time.monotonic() - t0 < 300:
                    if first is None and es.metric("in", "out") > 0:
                        first = time.monotonic()
                    time.sleep(0.05)
                took = time.monotonic() - (first or t0)
                done = es.metric("in", "out")
                es.stop()
                rates[mode].append(done / took)
                print(f"  round {rnd + 1} checkpoints {mode:>3}: {done} messages in {took:.2f} s = {done / took:,.0f} msg/s",
                      flush=True)
    finally:
        broker.close()
        vm.close()
    best = {m: max(r) for m, r in rates.items()}
    return {"runs": rates, "best_off": best["off"], "best_30s": best["30s"], "ratio": best["30s"] / best["off"]}


def print_report(report: dict) -> None:
    c = report.get("chaos")
    if c:
        print(f"published {c['published']:,} readings ({c['unacknowledged']} unacknowledged by the broker), "
              f"edgesieve started {c['edgesieve_starts']} times, last exit status {c['edgesieve_exit']}")
        print(f"windows: {c['windows_expected']:,} expected, {c['windows_missing']} missing, "
              f"{c['windows_unexpected']} unexpected, {c['windows_with_wrong_values']} with wrong values")
        print(f"readings: {c['readings_expected']:,} expected, {c['readings_lost']:,} lost, "
              f"{c['readings_counted_twice']:,} counted twice")
        print(f"points stored twice (InfluxDB would overwrite them): {c['points_stored_twice']} "
              f"({c['points_stored_twice_with_different_values']} with different values)")
        if c["broker_dropped_warnings"]:
            print(f"the broker logged {c['broker_dropped_warnings']} time(s) that it dropped messages for a full queue")
        print(f"reading a year ahead: {c['future_readings']} sent, {c['future_windows_landed']} window(s) landed")
        print(f"last run's counters: {c['last_run_counters']}")
        for key in ("missing_by_device", "lost_by_device", "short_windows", "short_examples", "missing_examples", "unexpected_examples", "wrong_examples"):
            if c[key]:
                print(f"{key}: {c[key]}")
    t = report.get("throughput")
    if t:
        print(f"throughput: checkpoints off {t['best_off']:,.0f} msg/s, interval 30s {t['best_30s']:,.0f} msg/s, "
              f"ratio {t['ratio']:.2f} (runs: {t['runs']})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=3.0, help="length of the chaos run (the issue asks for >= 3)")
    ap.add_argument("--rate", type=float, default=1000.0, help="messages per second the devices send")
    ap.add_argument("--checkpoint", default="30s", help="checkpoint.interval in the chaos run")
    ap.add_argument("--backlog", type=int, default=200_000, help="messages drained per throughput run")
    ap.add_argument("--rounds", type=int, default=1, help="throughput rounds (each: checkpoints off, then 30s)")
    ap.add_argument("--skip", action="append", default=[], choices=["broker", "kill", "cloud", "backlog", "future"],
                    help="leave one kind of trouble out (debugging only; the drill is the run with all of them)")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--only-throughput", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs, publisher log, state)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgesieve-drill-"))
    print(f"work folder: {work}", flush=True)
    report: dict = {"args": vars(args)}
    ok = True
    if not args.only_throughput:
        print(f"chaos run: {args.minutes:g} min, {args.rate:g} msg/s, {len(DEVICES)} devices", flush=True)
        r = report["chaos"] = chaos(args, work)
        ok &= not (r["windows_missing"] or r["readings_lost"] or r["readings_counted_twice"]
                   or r["windows_with_wrong_values"] or r["windows_unexpected"]
                   or r["points_stored_twice_with_different_values"])
    if not args.skip_throughput:
        print(f"throughput: {args.backlog} queued QoS 1 messages, {args.rounds} round(s)", flush=True)
        t = report["throughput"] = throughput(args, work)
        ok &= t["ratio"] >= 0.9
    (work / "report.json").write_text(json.dumps(report, indent=1, default=str))
    print_report(report)
    if not args.keep and ok:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    print("PASS" if ok else f"FAIL (work folder kept: {work})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
