"""State that cannot run code: the codec, framed files, and the refusal of corrupt, foreign and newer state."""

import collections
import functools
import logging
import pickle
import sqlite3
import struct
import sys
from pathlib import Path

import msgpack
import numpy as np
import pytest

from pipeline import load_pipeline
from pipeline.batch import Batch
from pipeline.checkpoint import CheckpointStore
from pipeline.stage import StateChanges
from pipeline.statecodec import OBJECT, StateFileError, StateTypes, dumps, loads
from pipeline.statefiles import pack, private_dir, roundtrip, seal, unpack
from tests.support.cli import edgesieve


class Node:
    """A plain class for the allow-list tests."""

    def __init__(self, name):
        self.name, self.peer, self.method = name, None, None

    def hello(self):
        return f"hi {self.name}"


class Slotted:
    __slots__ = ("a", "b")


NODES = StateTypes([f"{__name__}:Node", f"{__name__}:Slotted"])


def test_plain_data_numpy_and_containers_come_back_equal_and_typed():
    state = {
        ("pump", None): {"last": np.array([1.5, np.nan]), "n": 3},
        "wm": float("-inf"), "big": 2**80, "neg": -2**70, "flags": {1, 2}, "frozen": frozenset({"a"}),
        "i8": np.arange(6, dtype=np.int8).reshape(2, 3)[:, ::2], "u16": np.array(7, dtype=np.uint16),
        "when": np.array(["2026-01-01T00:00"], dtype="datetime64[s]"), "text": np.array(["ab", "c"]),
        "objects": np.array(["a", None, 2.5], dtype=object), "scalar": np.float32(0.25), "b": b"\x00\x01",
        "ordered": collections.OrderedDict([("z", 1), ("a", 2)]), "counts": collections.Counter("aab"),
        "dd": collections.defaultdict(float, {"x": 1.0}), "dq": collections.deque([1, 2], maxlen=3),
        "partial": collections.defaultdict(functools.partial(tuple, (0.0, 1.0))),
    }
    back = roundtrip(state)
    assert back.keys() == state.keys()
    for k, v in state.items():
        w = back[k]
        assert type(w) is type(v), k
        if isinstance(v, np.ndarray):
            assert w.dtype == v.dtype and w.shape == v.shape and w.flags.writeable
            assert np.array_equal(w, v, equal_nan=v.dtype.kind == "f"), k
        elif k not in ("partial", ("pump", None)):
            assert w == v, k
    assert back["dd"]["new"] == 0.0 and back["partial"]["new"] == (0.0, 1.0) and back["dq"].maxlen == 3
    assert np.isnan(back[("pump", None)]["last"][1])


def test_micro_batches_are_plain_state():
    b = Batch.from_records([{"ts": 1.0, "tags": {"device": "a"}, "fields": {"t": 2.0}, "note": "x"}])
    assert roundtrip([b])[0].to_records() == b.to_records()


def test_allow_listed_objects_keep_shared_references_cycles_and_bound_methods():
    a, b = Node("a"), Node("b")
    a.peer, b.peer = b, a
    a.method = a.hello
    s = Slotted()
    s.a, s.b = a, [a, b]
    back = loads(dumps({"first": a, "second": b, "slotted": s}, NODES), NODES)
    assert back["first"].peer is back["second"] and back["second"].peer is back["first"]
    assert back["slotted"].a is back["first"] and back["slotted"].b[1] is back["second"]
    assert back["first"].method() == "hi a"


def test_objects_outside_the_allow_list_are_not_written():
    with pytest.raises(TypeError, match="class tests.pipeline.test_state:Node cannot be stored in state: it is not in the state allow-list"):
        dumps(Node("x"))
    with pytest.raises(TypeError, match="cannot be referenced in state"):
        dumps({"factory": Node})
    with pytest.raises(TypeError, match="dtype"):
        dumps(np.zeros(2, dtype=[("a", "f8")]))


def _planted_object(name: str) -> bytes:
    raw = name.encode()
    inner = struct.pack(">H", len(raw)) + raw + msgpack.packb([{}, None])
    return seal(msgpack.packb({"model": msgpack.ExtType(OBJECT, inner)}))


def test_a_class_name_outside_the_allow_list_is_refused_without_importing_its_module():
    assert "this" not in sys.modules  # importing `this` prints the Zen of Python: a visible side effect
    with pytest.raises(StateFileError, match=r"m\.state: class this:Zen is not allowed in state.*move it aside"):
        unpack(_planted_object("this:Zen"), "m.state", NODES)
    assert "this" not in sys.modules
    with pytest.raises(StateFileError, match="os:system is not allowed"):
        unpack(_planted_object("os:system"), "m.state", NODES)


def test_corrupt_truncated_foreign_and_newer_values_are_refused_with_the_file_and_a_way_out():
    blob = pack({"n": 1})
    flipped = blob[:-1] + bytes([blob[-1] ^ 1])
    newer = blob[:8] + struct.pack(">H", 9) + blob[10:]
    cases = {flipped: r"corrupt \(checksum mismatch\)", blob[:-3]: "truncated", blob[:5]: "truncated",
             pickle.dumps({"n": 1}): "not edgesieve state .*a Python pickle", newer: "written by a newer edgesieve"}
    for bad, problem in cases.items():
        with pytest.raises(StateFileError, match=rf"^/s/x\.state: {problem}.*mv /s/x\.state /s/x\.state\.refused"):
            unpack(bad, "/s/x.state")


class Boom:
    """Unpickling this runs code: it would create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


PIPELINE = """\
pipeline: state
sources:
  - {{id: readings, type: replay, path: {csv}, tags: [device]}}
stages:
  - {{id: per_device, type: window, inputs: [readings], size: 10s, key: [device], aggregates: {{t: [count]}}}}
sinks:
  - {{id: out, type: file, inputs: [per_device], path: {out}}}
runtime:
  checkpoint: {{path: {checkpoint}, interval: 30s}}
  state_dir: {state}
"""


@pytest.fixture
def pipeline_file(tmp_path):
    csv = tmp_path / "r.csv"
    csv.write_text("ts,device,t\n" + "".join(f"{1000 + i},d{i % 3},{i}\n" for i in range(60)))
    path = tmp_path / "p.yaml"
    path.write_text(PIPELINE.format(csv=csv, out=tmp_path / "out.ndjson", checkpoint=tmp_path / "state" / "cp.db",
                                    state=tmp_path / "state"))
    return path


def test_a_planted_pickle_checkpoint_is_refused_and_runs_nothing(pipeline_file, tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "state").mkdir(mode=0o700)
    (tmp_path / "state" / "cp.db").write_bytes(pickle.dumps({"format": 1, "stages": Boom(marker)}))
    run = edgesieve("run", str(pipeline_file), cwd=tmp_path)
    assert run.returncode == 1
    assert f"checkpoint {tmp_path / 'state' / 'cp.db'}: not an edgesieve state store" in run.stderr
    assert "a Python pickle" in run.stderr and "move it aside" in run.stderr
    assert not marker.exists()
    assert not (tmp_path / "out.ndjson").exists() or (tmp_path / "out.ndjson").read_bytes() == b""


def _checkpointed(pipeline_file) -> Path:
    assert load_pipeline(pipeline_file).run().error is None
    return pipeline_file.parent / "state" / "cp.db"


def _refusal(pipeline_file) -> str:
    summary = load_pipeline(pipeline_file).run()
    assert summary.stopped_by == "error"
    return summary.error


def test_a_damaged_row_a_foreign_database_and_a_newer_store_are_refused(pipeline_file):
    cp = _checkpointed(pipeline_file)
    db = sqlite3.connect(cp)
    (value,) = db.execute("SELECT value FROM entries WHERE item='stage:per_device'").fetchone()
    db.execute("UPDATE entries SET value=? WHERE item='stage:per_device'", (value[:-1] + bytes([value[-1] ^ 255]),))
    db.commit()
    error = _refusal(pipeline_file)
    assert f"checkpoint {cp}" in error and "stage:per_device" in error and "checksum mismatch" in error
    assert f"mv {cp} {cp}-wal {cp}-shm refused/" in error
    db.execute("UPDATE entries SET value=?", (value,))
    db.execute("UPDATE meta SET value='3' WHERE name='format'")
    db.commit()
    assert "written by a newer edgesieve (store format 3" in _refusal(pipeline_file)
    db.execute("DROP TABLE entries")
    db.execute("CREATE TABLE readings (x)")
    db.commit()
    db.close()
    assert "an SQLite database of something else" in _refusal(pipeline_file)


def test_a_truncated_store_is_refused(pipeline_file):
    cp = _checkpointed(pipeline_file)
    for companion in ("-wal", "-shm"):
        Path(f"{cp}{companion}").unlink(missing_ok=True)
    data = cp.read_bytes()
    cp.write_bytes(data[: len(data) // 2])
    error = _refusal(pipeline_file)
    assert f"checkpoint {cp}" in error and "move it aside" in error


def test_state_files_are_private_and_a_wide_existing_folder_is_warned_about(pipeline_file, tmp_path, caplog):
    cp = _checkpointed(pipeline_file)
    assert (cp.parent.stat().st_mode & 0o777) == 0o700
    for f in [cp, *(Path(f"{cp}{c}") for c in ("-wal", "-shm"))]:
        if f.exists():
            assert (f.stat().st_mode & 0o777) == 0o600, f
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with caplog.at_level(logging.WARNING, logger="edgesieve"):
        private_dir(shared)
    assert "writable by everyone" in caplog.text and f"chmod 700 {shared}" in caplog.text
    assert (shared.stat().st_mode & 0o777) == 0o777  # an operator's folder is not changed behind their back


class ManyKeys:
    """A stand-in item with per-key state (the store's side of the contract is what is tested here)."""

    def __init__(self, n):
        self.values = {(f"d{i}",): np.full(64, float(i)) for i in range(n)}
        self.dirty = set(self.values)

    def changes(self):
        out = StateChanges({k: self.values[k] for k in self.dirty})
        self.dirty = set()
        return out


def test_a_checkpoint_writes_only_the_keys_that_changed(tmp_path):
    store = CheckpointStore(tmp_path / "cp.db")
    item = ManyKeys(2000)
    first = store.save({"s": 1}, {"stage:k": item.changes()})
    for i in range(0, 2000, 100):
        item.values[(f"d{i}",)] = item.values[(f"d{i}",)] + 1
        item.dirty.add((f"d{i}",))
    second = store.save({"s": 2}, {"stage:k": item.changes()})
    assert (first.rows, second.rows) == (2000, 20) and second.bytes * 50 < first.bytes * 1.01
    third = store.save({"s": 3}, {"stage:k": StateChanges({}, deleted=[("d5",)])})
    assert third.rows == 0 and third.deleted == 1
    store.close()
    saved = CheckpointStore(tmp_path / "cp.db").load()
    assert saved.sources == {"s": 3} and len(saved.items["stage:k"]) == 1999
    assert all(np.array_equal(saved.items["stage:k"][k], v) for k, v in item.values.items() if k != ("d5",))


def test_a_checkpoint_that_fails_half_way_leaves_the_previous_one_whole(tmp_path):
    store = CheckpointStore(tmp_path / "cp.db")
    store.save({"s": 1}, {"stage:a": StateChanges({("x",): 1}), "stage:b": StateChanges({("y",): 2})})
    with pytest.raises(TypeError):  # the second item's value cannot be stored: nothing of this checkpoint is
        store.save({"s": 2}, {"stage:a": StateChanges({("x",): 10}), "stage:b": StateChanges({("y",): Node("n")})})
    store.close()
    saved = CheckpointStore(tmp_path / "cp.db").load()
    assert saved.sources == {"s": 1} and saved.items == {"stage:a": {("x",): 1}, "stage:b": {("y",): 2}}


def test_state_of_an_item_that_left_the_pipeline_is_dropped(tmp_path):
    store = CheckpointStore(tmp_path / "cp.db")
    store.save({}, {"stage:old": StateChanges({("x",): 1}), "stage:kept": StateChanges({"": 2}, complete=True)})
    store.close()
    store = CheckpointStore(tmp_path / "cp.db")
    assert set(store.load().items) == {"stage:old", "stage:kept"}
    store.save({}, {"stage:kept": StateChanges({})})
    store.close()
    assert CheckpointStore(tmp_path / "cp.db").load().items == {"stage:kept": {"": 2}}


def test_a_checkpoint_moved_away_without_its_wal_is_refused(pipeline_file):
    cp = _checkpointed(pipeline_file)
    Path(f"{cp}-wal").write_bytes(b"stale")  # what is left when only the database file was moved aside
    cp.rename(cp.with_name("moved.db"))
    error = _refusal(pipeline_file)
    assert f"checkpoint {cp} is missing but {cp}-wal" in error and f"mv {cp}-wal" in error


def test_a_planted_slot_cannot_change_an_objects_class():
    raw = f"{__name__}:Slotted".encode()
    inner = struct.pack(">H", len(raw)) + raw + msgpack.packb([None, {"__class__": None}])
    with pytest.raises(StateFileError, match="Slotted has no slot '__class__'"):
        unpack(seal(msgpack.packb(msgpack.ExtType(OBJECT, inner))), "m.state", NODES)
