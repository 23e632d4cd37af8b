"""A kill -9 before the first periodic checkpoint loses nothing and writes nothing twice (real Mosquitto).

The runtime writes a checkpoint as soon as it starts without one (no source position yet; the lengths of the
output and dead-letter files as they are): a crash before the first periodic checkpoint then cuts both files back
to that length when the journal is replayed from its start, as after any later checkpoint. Before, a run killed
before its first checkpoint left nothing to cut back to, so the replay wrote again every record and dead letter the
killed run had written.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter

import pytest
import yaml

from tests.support.clients import read_ndjson
from tests.support.edgesieve_run import Run, durable_runtime, mqtt_source, publish_all
from tests.support.waiting import settle, wait_until

N1, N = 300, 500                      # published before the kill, in all


def is_bad(i: int) -> bool:
    return i % 37 == 5


def message(prefix: str, i: int) -> tuple[str, object]:
    return f"{prefix}/d{i % 3}", (b"{not json" if is_bad(i) else json.dumps({"ts": 1_700_000_000.0 + i, "v": i}))


@pytest.mark.slow
def test_a_kill_before_the_first_periodic_checkpoint_writes_each_record_and_dead_letter_once(broker, tmp_path, clients):
    prefix = f"t/first-{uuid.uuid4().hex[:6]}"
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({
        "pipeline": "first",
        "sources": [mqtt_source(broker.url, prefix)],
        "sinks": [{"id": "out", "type": "file", "inputs": ["in"], "path": str(tmp_path / "out.ndjson")}],
        "runtime": durable_runtime(tmp_path, "first", "1h"),   # no periodic checkpoint before the kill
    }))
    pub = clients(broker, client_id=f"pub-{uuid.uuid4().hex[:6]}", persistent=True)
    first = Run(path)
    wait_until(first.connected, what="the first run to connect")
    time.sleep(0.3)
    publish_all(pub, (message(prefix, i) for i in range(N1)))
    good = sum(not is_bad(i) for i in range(N1))
    wait_until(lambda: first.count("out", "in") >= good, what="the first run's sink to take its records")
    wait_until(lambda: first.count("in", "dead_lettered") >= N1 - good, what="its dead letters")
    # the sink writes through a buffer: some of them are in the file (before, the replay wrote those again)
    wait_until(lambda: len(read_ndjson(tmp_path / "out.ndjson")) > 0, what="records in the file")
    first.kill()                                        # no periodic checkpoint yet (interval 1 h)
    second = Run(path)
    wait_until(second.connected, what="the second run to connect")
    publish_all(pub, (message(prefix, i) for i in range(N1, N)))
    settle(lambda: len(read_ndjson(tmp_path / "out.ndjson")), quiet=1.0)
    err = second.stop()

    assert "replaying" in err, err[-3000:]
    written = Counter(r["fields"]["v"] for r in read_ndjson(tmp_path / "out.ndjson"))
    assert set(written) == {i for i in range(N) if not is_bad(i)} and max(written.values()) == 1
    dead = Counter(r["record"]["tags"]["topic"] if "tags" in r["record"] else json.dumps(r["record"], sort_keys=True)
                   for r in read_ndjson(tmp_path / "dead.ndjson"))
    assert sum(dead.values()) == sum(map(is_bad, range(N)))
