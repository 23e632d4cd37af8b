"""A start that restores no position of its own counts no journaled message twice (real Mosquitto).

The input journal lives in ``runtime.state_dir``, the checkpoint at ``runtime.checkpoint.path``. Before, deleting the
checkpoint to start over (or changing its path) left the journal behind, and the next start replayed every message
still in it: each was counted a second time (``edgesieve demo`` did, on every run after the first: it deletes its
checkpoint but the journal was in ``.edgesieve``). And two pipelines that share a state folder and a source id
shared one journal folder: each replayed the other's messages.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter

import pytest
import yaml

from connectors.mqtt.source import journal_dir
from tests.support.clients import read_ndjson
from tests.support.edgesieve_run import Run, durable_runtime, mqtt_source, publish_all
from tests.support.waiting import settle, wait_until


def pipeline_file(tmp_path, name: str, broker, prefix: str, checkpoint: str) -> tuple:
    out = tmp_path / f"{name}.ndjson"
    runtime = durable_runtime(tmp_path, name, "1h")
    runtime["checkpoint"]["path"] = str(tmp_path / "state" / checkpoint)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "pipeline": name, "sources": [mqtt_source(broker.url, prefix)],
        "sinks": [{"id": "out", "type": "file", "inputs": ["in"], "path": str(out)}], "runtime": runtime}))
    return path, out


def run_with(path, out, pub, messages: list) -> str:
    """Start ``edgesieve run``, publish ``messages`` once it is connected, wait until its sink took them (and whatever
    it replays), stop it (SIGTERM: the file sink writes what it holds)."""
    run = Run(path)
    try:
        wait_until(run.connected, what="the pipeline to connect")
        time.sleep(0.3)
        publish_all(pub, messages)
        wait_until(lambda: run.count("out", "in") >= len(messages), what=f"the sink to take {len(messages)} records")
        settle(lambda: run.count("out", "in"), quiet=0.8)
    except AssertionError as e:
        raise AssertionError(f"{e}; the run's log:\n{run.stop()[-3000:]}") from None
    return run.stop()


def written(out) -> Counter:
    """How many times the file sink wrote each value."""
    return Counter(r["fields"]["v"] for r in read_ndjson(out))


def readings(prefix: str, lo: int, hi: int) -> list:
    return [(f"{prefix}/d{i % 3}", json.dumps({"ts": 1_700_000_000.0 + i, "v": i})) for i in range(lo, hi)]


@pytest.mark.slow
def test_starting_over_without_the_checkpoint_replays_nothing_the_old_checkpoint_counted(broker, tmp_path, clients):
    prefix = f"t/reset-{uuid.uuid4().hex[:6]}"
    path, out = pipeline_file(tmp_path, "reset", broker, prefix, "reset.checkpoint")
    pub = clients(broker, client_id=f"pub-{uuid.uuid4().hex[:6]}", persistent=True)
    run_with(path, out, pub, readings(prefix, 0, 200))
    (tmp_path / "state" / "reset.checkpoint").unlink()          # the operator starts over
    err = run_with(path, out, pub, readings(prefix, 200, 300))
    got = written(out)
    assert set(got) == set(range(300)) and max(got.values()) == 1             # before: 0-199 twice
    assert "not replayed" in err, err[-3000:]


@pytest.mark.slow
def test_a_new_checkpoint_path_replays_nothing_either(broker, tmp_path, clients):
    prefix = f"t/moved-{uuid.uuid4().hex[:6]}"
    path, out = pipeline_file(tmp_path, "moved", broker, prefix, "old.checkpoint")
    pub = clients(broker, client_id=f"pub-{uuid.uuid4().hex[:6]}", persistent=True)
    run_with(path, out, pub, readings(prefix, 0, 150))
    path2, _ = pipeline_file(tmp_path, "moved", broker, prefix, "new.checkpoint")   # same file, other checkpoint
    run_with(path2, out, pub, readings(prefix, 150, 250))
    got = written(out)
    assert set(got) == set(range(250)) and max(got.values()) == 1


@pytest.mark.slow
def test_two_pipelines_sharing_a_state_folder_and_a_source_id_keep_their_journals_apart(broker, tmp_path, clients):
    a_prefix, b_prefix = f"t/a-{uuid.uuid4().hex[:6]}", f"t/b-{uuid.uuid4().hex[:6]}"
    a_path, a_out = pipeline_file(tmp_path, "plant-a", broker, a_prefix, "a.checkpoint")
    b_path, b_out = pipeline_file(tmp_path, "plant-b", broker, b_prefix, "b.checkpoint")
    pub = clients(broker, client_id=f"pub-{uuid.uuid4().hex[:6]}", persistent=True)
    run_with(a_path, a_out, pub, readings(a_prefix, 0, 100))
    run_with(b_path, b_out, pub, readings(b_prefix, 1000, 1100))
    run_with(a_path, a_out, pub, readings(a_prefix, 100, 150))        # A again, from its own checkpoint

    a, b = written(a_out), written(b_out)
    assert set(a) == set(range(150)) and max(a.values()) == 1              # before: B's 100 in A's file
    assert set(b) == set(range(1000, 1100)) and max(b.values()) == 1
    assert read_ndjson(tmp_path / "dead.ndjson") == []       # before: A replayed B's 100, dead-lettered (not its topics)


def test_a_journal_in_the_earlier_place_is_moved_to_its_pipeline(tmp_path):
    legacy = tmp_path / "journal" / "in"
    legacy.mkdir(parents=True)
    (legacy / f"{1:020d}.journal").write_bytes(b"")
    (legacy / "committed").write_text("0\n")
    got = journal_dir(tmp_path, "plant-1", "in")
    assert got == tmp_path / "journal" / "plant-1" / "in"
    assert sorted(p.name for p in got.iterdir()) == [f"{1:020d}.journal", "committed"]
    assert list(legacy.iterdir()) == []
    assert journal_dir(tmp_path, "plant-2", "in") == tmp_path / "journal" / "plant-2" / "in"   # nothing left to move


def test_journal_folders_of_two_names_never_coincide_and_a_name_like_the_source_id_works(tmp_path):
    legacy = tmp_path / "journal" / "in"
    legacy.mkdir(parents=True)
    (legacy / f"{1:020d}.journal").write_bytes(b"")
    got = journal_dir(tmp_path, "in", "in")                       # moved into a folder inside the earlier one
    assert got == legacy / "in" and (got / f"{1:020d}.journal").exists()
    names = ["plant 1", "plant_1", ".", "..", "a/b", "a_b"]
    folders = {journal_dir(tmp_path, n, "x") for n in names}
    assert len(folders) == len(names)
    assert all(f.parent.parent == tmp_path / "journal" for f in folders)   # none outside the journal folder
