"""Windows forced out by ``max_open_windows`` are the same after a kill -9 and a journal replay (real Mosquitto).

Four devices are on time and a fifth sends readings stamped seconds behind them (a device flushing a backlog);
the window stage may keep only ``LIMIT`` windows open, so the lagging device's window is forced out as soon as a
newer window opens, and its later readings for it are late (dead-lettered). Which readings a forced window holds
therefore depends on the exact moment of each force. The pipeline is killed (-9) with journaled messages its
checkpoint does not cover and restarted: the replay cuts the journal into other micro-batches, and the windows
and dead letters must still be those of a run that was never interrupted and of an independent computation of
the rule (a reading at a time: add it, then force the oldest windows by end, ties by device, while more than
``LIMIT`` are open).
"""

from __future__ import annotations

import math
import time
import uuid
from collections import Counter

import pytest
import yaml

from tests.support.clients import read_ndjson, windows_written
from tests.support.edgesieve_run import Run, durable_runtime, mqtt_source, publish_readings
from tests.support.waiting import settle, wait_until

DEVICES = 5                     # d0..d3 on time, d4 LAG seconds behind
LAG = 6.0
LIMIT = 12
N1, N2, N3, N = 700, 1100, 1400, 1800     # published: before the checkpoint, before the kill, while down, after


def reading(base: float, i: int) -> tuple[str, dict]:
    device = i % DEVICES
    return f"d{device}", {"ts": base + i * 0.01 - (LAG if device == DEVICES - 1 else 0.0), "v": i}


def expected(base: float) -> tuple[dict, set]:
    """The windows ((device, start) -> (count, sum of v)) and the late readings, one reading at a time."""
    open_: dict = {}
    floor = [-math.inf] * DEVICES           # a device's clock floor: its windows ending by it are emitted
    out, late = {}, set()
    for i in range(N):
        device, r = reading(base, i)
        d = int(device[1:])
        start = float(math.floor(r["ts"]))
        if start + 1.0 <= floor[d]:
            late.add(i)
            continue
        w = open_.setdefault((d, start), [0, 0.0])
        w[0] += 1
        w[1] += r["v"]
        while len(open_) > LIMIT:
            od, ostart = min(open_, key=lambda k: (k[1] + 1.0, k[0]))  # oldest by end, ties by device
            floor[od] = max(floor[od], ostart + 1.0)
            for k in [k for k in open_ if k[0] == od and k[1] + 1.0 <= floor[od]]:
                out[k] = open_.pop(k)
    out.update(open_)                       # the rest are emitted when the run stops
    return {(f"d{d}", s): tuple(v) for (d, s), v in out.items()}, late


def doc(tmp_path, url: str, prefix: str) -> dict:
    return {
        "pipeline": "forced",
        "sources": [mqtt_source(url, prefix)],
        "stages": [{"id": "win", "type": "window", "inputs": ["in"], "size": "1s", "key": ["device"],
                    "allowed_lateness": "1000s", "late": "dead_letter", "max_open_windows": LIMIT,
                    "aggregates": {"v": ["sum"]}}],
        "sinks": [{"id": "out", "type": "file", "inputs": ["win"], "path": str(tmp_path / "out.ndjson")}],
        "runtime": durable_runtime(tmp_path, "forced", "4s"),
    }


def late_written(path) -> Counter:
    """The ``v`` of every late reading dead-lettered, with how many times it was written."""
    return Counter(r["record"]["fields"]["v"] for r in read_ndjson(path) if "arrived after its window closed" in r["reason"])


@pytest.mark.slow
def test_forced_windows_and_late_readings_survive_a_kill_and_a_replay_cut_differently(broker, tmp_path, clients):
    base = math.floor(time.time()) + 0.005   # no reading on a window's edge
    pub = clients(broker, client_id=f"pub-{uuid.uuid4().hex[:6]}", persistent=True)
    want, want_late = expected(base)
    assert len(want_late) > 100 and len(want) > 2 * LIMIT, "the rule forced too little: this test would prove nothing"

    # the reference: one run, never interrupted
    (tmp_path / "calm").mkdir()
    calm_prefix = f"t/forced-calm-{uuid.uuid4().hex[:6]}"
    (tmp_path / "calm" / "p.yaml").write_text(yaml.safe_dump(doc(tmp_path / "calm", broker.url, calm_prefix)))
    calm = Run(tmp_path / "calm" / "p.yaml")
    wait_until(calm.connected, what="the calm run to connect")
    time.sleep(0.3)
    publish_readings(pub, calm_prefix, (reading(base, i) for i in range(N)))
    wait_until(lambda: calm.count("in", "out") >= N, what="the calm run to take every reading")
    settle(lambda: calm.count("win", "windows_forced"), quiet=0.5)
    calm.stop()

    # the same readings, killed with journaled messages the checkpoint does not cover, then restarted
    (tmp_path / "crash").mkdir()
    prefix = f"t/forced-crash-{uuid.uuid4().hex[:6]}"
    path = tmp_path / "crash" / "p.yaml"
    path.write_text(yaml.safe_dump(doc(tmp_path / "crash", broker.url, prefix)))
    first = Run(path)
    wait_until(first.connected, what="the first run to connect")
    time.sleep(0.3)
    publish_readings(pub, prefix, (reading(base, i) for i in range(N1)))
    wait_until(lambda: first.count("in", "out") >= N1, what="phase 1")
    done = first.count("runtime", None, "edgesieve_checkpoints_total")
    wait_until(lambda: first.count("runtime", None, "edgesieve_checkpoints_total") > done, what="a checkpoint")
    publish_readings(pub, prefix, (reading(base, i) for i in range(N1, N2)))             # right after a checkpoint: the next is 4 s away
    wait_until(lambda: first.count("in", "out") >= N2, what="phase 2")
    forced_before_kill = first.count("win", "windows_forced")
    first.kill()
    publish_readings(pub, prefix, (reading(base, i) for i in range(N2, N3)))             # queued by the broker while edgesieve is down
    second = Run(path)
    wait_until(second.connected, what="the second run to connect")
    publish_readings(pub, prefix, (reading(base, i) for i in range(N3, N)))
    settle(lambda: second.count("in", "out"), quiet=1.0)
    err = second.stop()

    assert "replaying" in err and "journaled message(s)" in err, err[-3000:]
    assert forced_before_kill > 0, "nothing was forced before the kill"
    assert windows_written(tmp_path / "calm" / "out.ndjson") == want
    assert windows_written(tmp_path / "crash" / "out.ndjson") == want
    for run in ("calm", "crash"):
        late = late_written(tmp_path / run / "dead.ndjson")
        assert set(late) == want_late and max(late.values()) == 1, run
