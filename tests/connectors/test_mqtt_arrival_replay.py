"""A journal replay a day later judges far-future readings as they were judged when they arrived (real Mosquitto).

The pipeline is killed (-9) with journaled messages its checkpoint does not cover, and restarted with a clock a
day ahead: the replayed messages carry their arrival time from the journal, so the window stage's ``max_future``
refuses exactly the readings it refused the first time. Windows and dead letters are compared with a run that
was never interrupted and with an independent computation from what was published.
"""

from __future__ import annotations

import math
import time
import uuid
from collections import Counter, defaultdict

import pytest
import yaml

from tests.support.clients import read_ndjson, windows_written
from tests.support.edgesieve_run import Run, durable_runtime, mqtt_source, publish_readings
from tests.support.waiting import settle, wait_until

DEVICES = 5
LATER = 2 * 86_400.0            # the restarted pipeline's clock is two days ahead
N1, N2, N3, N = 900, 1300, 1600, 2000     # published: before the checkpoint, before the kill, while down, after


def is_future(i: int) -> bool:
    return i % 53 == 7


def reading(base: float, i: int) -> tuple[str, dict]:
    """Reading ``i``: on time, or an hour ahead of its arrival (before the kill, of the first clock; after it, of
    the second), so that it is future for both runs wherever it comes."""
    ts = base + i * 0.01
    if is_future(i):
        ts += 3600.0 + (LATER if i >= N2 else 0.0)
    return f"d{i % DEVICES}", {"ts": ts, "v": i}


def expected_windows(base: float) -> dict:
    """(device, window start) -> (count, sum of v) of the readings that are not from the future."""
    out: dict = defaultdict(lambda: [0, 0.0])
    for i in range(N):
        if not is_future(i):
            device, r = reading(base, i)
            w = out[(device, float(math.floor(r["ts"])))]
            w[0] += 1
            w[1] += r["v"]
    return {k: tuple(v) for k, v in out.items()}



def dead_letters(path) -> Counter:
    """(reason kind, device, ts, v) of every dead letter, with how many times it was written."""
    return Counter((r["reason"].split(": ")[1], r["record"]["tags"]["device"], r["record"]["ts"], r["record"]["fields"]["v"])
                   for r in read_ndjson(path))


def doc(tmp_path, url: str, prefix: str) -> dict:
    return {
        "pipeline": "arrival",
        "sources": [mqtt_source(url, prefix)],
        "stages": [{"id": "win", "type": "window", "inputs": ["in"], "size": "1s", "key": ["device"],
                    "allowed_lateness": "1000s", "late": "dead_letter", "max_future": "300s",
                    "aggregates": {"v": ["sum"]}}],
        "sinks": [{"id": "out", "type": "file", "inputs": ["win"], "path": str(tmp_path / "out.ndjson")}],
        "runtime": durable_runtime(tmp_path, "arrival", "4s"),
    }


@pytest.mark.slow
def test_a_replay_a_day_later_gives_the_windows_and_dead_letters_of_an_uninterrupted_run(broker, tmp_path, clients):
    base = time.time()
    pub = clients(broker, client_id=f"pub-{uuid.uuid4().hex[:6]}", persistent=True)

    # the reference: one run, never interrupted, its clock the wall clock
    (tmp_path / "calm").mkdir()
    calm_prefix = f"t/arrival-calm-{uuid.uuid4().hex[:6]}"
    (tmp_path / "calm" / "p.yaml").write_text(yaml.safe_dump(doc(tmp_path / "calm", broker.url, calm_prefix)))
    calm = Run(tmp_path / "calm" / "p.yaml", 0.0)
    wait_until(lambda: calm.connected(), what="the calm run to connect")
    time.sleep(0.3)
    publish_readings(pub, calm_prefix, (reading(base, i) for i in range(N)))
    wait_until(lambda: calm.count("in", "out") >= N, what="the calm run to take every reading")
    calm.stop()

    # the same readings, killed with journaled messages the checkpoint does not cover, restarted two days later
    (tmp_path / "crash").mkdir()
    prefix = f"t/arrival-crash-{uuid.uuid4().hex[:6]}"
    path = tmp_path / "crash" / "p.yaml"
    path.write_text(yaml.safe_dump(doc(tmp_path / "crash", broker.url, prefix)))
    first = Run(path, 0.0)
    wait_until(lambda: first.connected(), what="the first run to connect")
    time.sleep(0.3)
    publish_readings(pub, prefix, (reading(base, i) for i in range(N1)))
    wait_until(lambda: first.count("in", "out") >= N1, what="phase 1")
    done = first.count("runtime", None, "edgesieve_checkpoints_total")
    wait_until(lambda: first.count("runtime", None, "edgesieve_checkpoints_total") > done, what="a checkpoint")
    publish_readings(pub, prefix, (reading(base, i) for i in range(N1, N2)))             # right after a checkpoint: the next is 4 s away
    wait_until(lambda: first.count("in", "out") >= N2, what="phase 2")
    refused = sum(map(is_future, range(N2)))
    wait_until(lambda: first.count("win", "future_timestamp") == refused, what="the window stage to refuse them")
    first.kill()
    publish_readings(pub, prefix, (reading(base, i) for i in range(N2, N3)))             # queued by the broker while edgesieve is down
    second = Run(path, LATER)
    wait_until(lambda: second.connected(), what="the second run to connect")
    publish_readings(pub, prefix, (reading(base, i) for i in range(N3, N)))
    settle(lambda: second.count("in", "out"), quiet=1.0)
    replayed_future = second.count("win", "future_timestamp")
    err = second.stop()

    assert "replaying" in err and "journaled message(s)" in err, err[-3000:]

    want = expected_windows(base)
    assert windows_written(tmp_path / "calm" / "out.ndjson") == want
    assert windows_written(tmp_path / "crash" / "out.ndjson") == want
    future = {("future_timestamp", *reading(base, i)[:1], reading(base, i)[1]["ts"], i) for i in range(N) if is_future(i)}
    calm_dead, crash_dead = dead_letters(tmp_path / "calm" / "dead.ndjson"), dead_letters(tmp_path / "crash" / "dead.ndjson")
    assert set(calm_dead) == future and max(calm_dead.values()) == 1
    # each dead letter once: the file is cut back to the checkpoint on restart and the replay writes it again
    assert set(crash_dead) == future and max(crash_dead.values()) == 1
    # the replay judged far-future readings of phase 2 again (two days later) and refused them again; had a
    # checkpoint covered all of phase 2, this test would have proved nothing
    assert replayed_future > sum(map(is_future, range(N2, N))), "no future reading of phase 2 was replayed"
