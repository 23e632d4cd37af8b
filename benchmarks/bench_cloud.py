"""Cloud uplink benchmark against a real VictoriaMetrics (started here on a free loopback port).

    python benchmarks/bench_cloud.py [--points 100000] [--outage 60] [--rate 1000] [--devices 1000] [--seconds 60]
                                     [--full 5] [--only throughput,outage,bandwidth,diskfull]

1. throughput: points/s through the durable outbox (fsync=full) into VictoriaMetrics, against writing the same
   points straight through the same transport (no outbox) in the same run; the ratio is the price of durability.
2. outage drill: a steady load of --rate points/s; the server is stopped for --outage seconds and started again.
   Reports points buffered, outbox disk used, time to drain after the server is back, points lost and duplicates
   (both must be 0).
3. bandwidth: --devices devices at 10 Hz for --seconds → replay (CSV) → 10 s windows (mean, min, max, stddev, p95
   of two fields) → influxdb sink; bytes in from devices (as one JSON message per reading, what they would publish
   over MQTT, and as the CSV file) vs bytes out to the cloud, gzip on and off.
4. disk-full drill: a pipeline (replay at 20x → 10 s windows → influxdb sink) whose state folder (outbox and
   checkpoint) is on a 4 MiB tmpfs; the server goes down, the disk is filled to the last byte for --full seconds,
   space is freed, the server comes back. Reports how long the sink held the pipeline, points lost and duplicates
   against the windows computed from the CSV with pandas (both must be 0). Needs root to mount the tmpfs.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from connectors.influx.outbox import Outbox, Row  # noqa: E402
from connectors.influx.sender import Backoff, Sender  # noqa: E402
from connectors.influx.transport import InfluxTransport  # noqa: E402
from tests.support.victoria import VictoriaMetrics  # noqa: E402

S = 1_000_000_000


def make_points(meas: str, n: int, devices: int = 100) -> list[tuple]:
    t0 = (int(time.time()) - 6 * 3600) * S
    rng = np.random.default_rng(1)
    vals = rng.normal(20, 2, (n, 3)).round(4).tolist()
    return [(meas, {"site": "plant1", "device": f"d{i % devices:04d}"}, t0 + (i // devices) * 10 * S,
             {"t_mean": v[0], "t_max": v[1], "t_stddev": v[2], "count": 100.0}) for i, v in enumerate(vals)]


def transport(vm: VictoriaMetrics, gzip: bool = True) -> InfluxTransport:
    return InfluxTransport(url=vm.url, org="bench", bucket="bench", token="bench-token", gzip=gzip, sink_id="bench")


def wait_empty(ob: Outbox, timeout: float = 600) -> float:
    t = time.perf_counter()
    while ob.pending() and time.perf_counter() - t < timeout:
        time.sleep(0.005)
    return time.perf_counter() - t


def bench_throughput(vm: VictoriaMetrics, work: Path, n: int) -> dict:
    tr = transport(vm)
    direct = [Row(i, *p, 0.0, False, 0) for i, p in enumerate(make_points("direct", n))]
    t = time.perf_counter()
    for i in range(0, n, 5000):
        tr.send(direct[i:i + 5000])
    direct_s = time.perf_counter() - t

    ob = Outbox(work / "tp.db", fsync="full")
    snd = Sender(ob, transport(vm), name="bench", batch_size=5000, flush_interval_s=0.05).start()
    pts = make_points("outbox", n)
    t = time.perf_counter()
    for i in range(0, n, 1000):       # one put per micro-batch, as a sink gets them
        ob.put(pts[i:i + 1000])
    put_s = time.perf_counter() - t
    wait_empty(ob)
    total_s = time.perf_counter() - t
    snd.stop()
    ob.close()
    landed = vm.count('{__name__="outbox_t_mean"}')
    return {"points": n, "direct_points_per_s": round(n / direct_s), "outbox_points_per_s": round(n / total_s),
            "outbox_put_points_per_s": round(n / put_s), "outbox_vs_direct": round(direct_s / total_s, 3),
            "landed": landed}


def bench_outage(vm: VictoriaMetrics, work: Path, outage: float, rate: int) -> dict:
    ob = Outbox(work / "outage.db", fsync="full")
    snd = Sender(ob, transport(vm), name="bench", batch_size=5000, flush_interval_s=0.5,
                 backoff=Backoff(initial_s=0.5, max_s=5.0, seed=1)).start()
    warm, cool = 3.0, 3.0
    total = int(rate * (warm + outage + cool))
    pts = make_points("outage", total, devices=1000)
    state = {"max_pending": 0, "max_file": 0}
    done = threading.Event()

    def produce():
        t0 = time.perf_counter()
        step = max(rate // 10, 1)
        for k, i in enumerate(range(0, total, step)):
            ob.put(pts[i:i + step])
            state["max_pending"] = max(state["max_pending"], ob.pending())
            delay = t0 + (k + 1) * 0.1 - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        done.set()

    th = threading.Thread(target=produce)
    th.start()
    time.sleep(warm)
    vm.stop()
    t_down = time.perf_counter()
    while time.perf_counter() - t_down < outage:
        time.sleep(0.5)
        state["max_file"] = max(state["max_file"], ob.stats()["file_bytes"])
    buffered = ob.pending()
    vm.start()
    t_up = time.perf_counter()
    drained_in = None
    while drained_in is None:
        if ob.pending() == 0 or (done.is_set() and wait_empty(ob) is not None and ob.pending() == 0):
            drained_in = time.perf_counter() - t_up
        time.sleep(0.01)
    th.join()
    wait_empty(ob)
    snd.stop()
    stats = ob.stats()
    ob.close()
    samples = vm.samples('{__name__="outage_t_mean"}')
    stored = sum(len(v) for v in samples.values())
    distinct = sum(len(set(t for t, _ in v)) for v in samples.values())
    return {"outage_s": outage, "rate_points_per_s": rate, "points_produced": total,
            "points_buffered_at_restart": buffered, "max_pending": state["max_pending"],
            "outbox_file_bytes_max": state["max_file"], "time_to_drain_s": round(drained_in, 2),
            "retries": snd.retries, "points_lost": total - distinct, "duplicates": stored - distinct,
            "sent_counter": stats["sent"]}


def bench_bandwidth(vm: VictoriaMetrics, work: Path, devices: int, seconds: int) -> dict:
    from pipeline import load_pipeline

    import pandas as pd

    t0 = (int(time.time()) // 3600 - 3) * 3600
    path = work / "readings.csv"
    rng = np.random.default_rng(2)
    n = seconds * 10
    df = pd.DataFrame({"ts": np.repeat(t0 + np.arange(n) / 10, devices).round(1), "site": "plant1",
                       "device": np.tile([f"d{d:04d}" for d in range(devices)], n),
                       "temperature": rng.normal(20, 2, n * devices).round(3),
                       "vibration": rng.gamma(2, 0.1, n * devices).round(4)})
    df.to_csv(path, index=False)
    # what the devices would have published: one JSON message per reading (MQTT payload, without MQTT framing)
    json_bytes = sum(len(json.dumps({"ts": r[0], "site": r[1], "device": r[2], "temperature": r[3], "vibration": r[4]},
                                    separators=(",", ":"))) for r in df.itertuples(index=False))
    sink = """  - {{id: {id}, type: influxdb, inputs: [w10], url: {url}, org: b, bucket: b, measurement: {id},
     token: bench-token, gzip: {gzip}, flush_interval: 0.2, outbox: {work}/{id}.db}}"""
    yaml = f"""
pipeline: bandwidth
sources: [{{id: devices, type: replay, path: {path}, tags: [site, device], chunk_size: 50000}}]
stages:
  - {{id: w10, type: window, inputs: [devices], size: 10s, key: [site, device],
     aggregates: {{temperature: [mean, min, max, stddev, p95], vibration: [mean, min, max, stddev, p95]}}}}
sinks:
{sink.format(id="cloud_gzip", url=vm.url, gzip="true", work=work)}
{sink.format(id="cloud_plain", url=vm.url, gzip="false", work=work)}
runtime: {{dead_letter: null, batching: {{max_records: 50000}}}}
"""
    t = time.perf_counter()
    summary = load_pipeline(yaml).run()
    run_s = time.perf_counter() - t
    assert summary.error is None, summary.error
    c = summary.counters
    csv_bytes = c["devices"]["bytes_in"]
    gz, plain = c["cloud_gzip"]["bytes_out"], c["cloud_plain"]["bytes_out"]
    return {"devices": devices, "hz": 10, "seconds": seconds, "readings": devices * seconds * 10,
            "points_out": c["cloud_gzip"].get("outbox_sent", 0),
            "bytes_in_json_messages": json_bytes, "bytes_in_csv": csv_bytes,
            "bytes_out_gzip": gz, "bytes_out_plain": plain,
            "reduction_json_vs_gzip": round(json_bytes / gz, 1), "reduction_json_vs_plain": round(json_bytes / plain, 1),
            "reduction_csv_vs_gzip": round(csv_bytes / gz, 1),
            "in_bytes_per_s_json": round(json_bytes / seconds), "out_bytes_per_s_gzip": round(gz / seconds),
            "pipeline_seconds": round(run_s, 2)}


def bench_disk_full(vm: VictoriaMetrics, work: Path, full_s: float, devices: int = 50, seconds: int = 300) -> dict:
    import pandas as pd

    from pipeline import load_pipeline
    from tests.support.small_disk import SmallDisk

    with SmallDisk(4 * 2**20) as disk:
        if not disk.mounted:
            return {"skipped": "cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)"}
        t0 = (int(time.time()) // 3600 - 3) * 3600
        n = seconds * 10
        rng = np.random.default_rng(4)
        df = pd.DataFrame({"ts": np.repeat(t0 + np.arange(n) / 10, devices).round(1),
                           "device": np.tile([f"d{d:03d}" for d in range(devices)], n),
                           "t": rng.normal(20, 2, n * devices).round(3)})
        df.to_csv(work / "full.csv", index=False)
        p = load_pipeline(f"""
pipeline: diskfull
sources: [{{id: devices, type: replay, path: {work / 'full.csv'}, tags: [device], speed: 20}}]
stages: [{{id: w10, type: window, inputs: [devices], size: 10s, key: [device], aggregates: {{t: [mean, max]}}}}]
sinks:
  - {{id: cloud, type: influxdb, inputs: [w10], url: {vm.url}, org: b, bucket: b, measurement: diskfull, token: t,
     flush_interval: 0.1, retry_initial: 0.1, retry_max: 1, drain_timeout: 120}}
runtime: {{state_dir: {disk.dir}, checkpoint: {{path: {disk.dir / 'cp.pickle'}, interval: 1}}, dead_letter: null}}
""")
        box: dict = {}
        th = threading.Thread(target=lambda: box.setdefault("summary", p.run()))
        started = time.perf_counter()
        th.start()

        def until(cond, timeout=120):
            deadline = time.perf_counter() + timeout
            while not cond() and time.perf_counter() < deadline:
                time.sleep(0.05)

        until(lambda: p.metrics.get("cloud", "outbox_sent") > 0 or p.metrics.get("cloud", "out") > 0)
        time.sleep(1.0)
        vm.stop()
        disk.fill()
        until(lambda: p.metrics.gauges().get(("cloud", "sink_blocked")) == 1)
        blocked_at = time.perf_counter()
        time.sleep(full_s)
        disk.free()
        until(lambda: p.metrics.gauges().get(("cloud", "sink_blocked")) == 0)
        held_s = time.perf_counter() - blocked_at
        time.sleep(1.0)
        vm.start()
        th.join(600)
        summary = box["summary"]
        assert summary.error is None, summary.error
        expect = df.groupby(["device", (df.ts // 10 * 10).astype(int)]).t.mean()
        got = vm.samples('{__name__="diskfull_t_mean"}')
        stored = sum(len(v) for v in got.values())
        landed = {(dict(labels)["device"], ts // 1000): v for (_, labels), vals in got.items() for ts, v in vals}
        wrong = sum(1 for k, v in expect.items() if k in landed and abs(landed[k] - v) > 1e-9 * max(abs(v), 1))
        c = summary.counters["cloud"]
        return {"readings": len(df), "points_expected": len(expect), "full_s": full_s,
                "sink_held_pipeline_s": round(held_s, 2), "blocked_episodes": c.get("blocked_episodes", 0),
                "write_retries": c.get("retries", 0), "run_s": round(time.perf_counter() - started, 1),
                "points_lost": len(set(expect.index) - set(landed)), "duplicates": stored - len(landed),
                "values_wrong": wrong, "outbox_dropped": c.get("outbox_dropped", 0)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=100_000, help="points for the throughput run")
    ap.add_argument("--outage", type=float, default=60.0, help="seconds the server is down in the outage drill")
    ap.add_argument("--rate", type=int, default=1000, help="points/s produced during the outage drill")
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--seconds", type=int, default=60, help="seconds of device data for the bandwidth run")
    ap.add_argument("--full", type=float, default=5.0, help="seconds the state disk stays full in the disk-full drill")
    ap.add_argument("--only", default="throughput,outage,bandwidth,diskfull")
    args = ap.parse_args(argv)
    if not VictoriaMetrics.available():
        print("victoria-metrics not found at /usr/bin/victoria-metrics (Debian package victoria-metrics)")
        return 2
    work = Path(tempfile.mkdtemp(prefix="bench-cloud-"))
    only = set(args.only.split(","))
    results = {}
    try:
        with VictoriaMetrics() as vm:
            if "throughput" in only:
                results["throughput"] = bench_throughput(vm, work, args.points)
                print(json.dumps({"throughput": results["throughput"]}), flush=True)
            if "outage" in only:
                results["outage"] = bench_outage(vm, work, args.outage, args.rate)
                print(json.dumps({"outage": results["outage"]}), flush=True)
            if "bandwidth" in only:
                results["bandwidth"] = bench_bandwidth(vm, work, args.devices, args.seconds)
                print(json.dumps({"bandwidth": results["bandwidth"]}), flush=True)
            if "diskfull" in only:
                results["diskfull"] = bench_disk_full(vm, work, args.full)
                print(json.dumps({"diskfull": results["diskfull"]}), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
