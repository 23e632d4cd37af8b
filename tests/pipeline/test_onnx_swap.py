"""Hot swap of the onnx stage's model: under load, rollback, sha256 on swaps, versioned folders, file watching."""

import re
import threading
import time

import numpy as np
import pytest

from pipeline.batch import Batch
from pipeline.stages.onnx import Onnx
from pipeline.testing import build_stage
from tests.support.onnx_models import classifier, sum_plus, write_sidecar
from tests.support.waiting import wait_for

FEEDS = {"x": {"source": "fields", "fields": ["a", "b", "c"]}}


def stage_for(model, **extra):
    return build_stage(Onnx, {"model": str(model), "feeds": FEEDS, "outputs": {"y": {"decode": "regression"}}, **extra})[0]


def batch(start, n=10):
    return Batch.from_records([{"ts": float(i), "fields": {"a": float(i), "b": 1.0, "c": 0.0}} for i in range(start, start + n)])


def test_swap_under_load_loses_nothing_and_every_record_matches_its_model(tmp_path):
    v1 = sum_plus(tmp_path / "v1" / "m.onnx", bias=100.0)
    v2 = sum_plus(tmp_path / "v2" / "m.onnx", bias=200.0, sidecar=True)
    stage = stage_for(v1)
    first_version = stage.model_version
    futures = []
    swapper = threading.Timer(0.05, lambda: futures.append(stage.request_swap(v2)))
    swapper.start()
    outs = []
    for k in range(400):                       # the pipeline thread keeps processing meanwhile
        outs.append(stage.process(batch(10 * k)))
        if k > 100 and futures and futures[0].done() and stage.model_version != first_version and k > 150:
            break
        time.sleep(0.001)
    outs.append(stage.flush())
    swapper.join()
    out = Batch.concat(outs)
    n = len(out)
    assert n == 10 * (len(outs) - 1)                                  # nothing lost
    assert out.ts.tolist() == [float(i) for i in range(n)]            # nothing reordered
    version = out.tags["model_version"]
    bias = np.where(version == first_version, 100.0, 200.0)
    assert np.array_equal(out.fields["y"], out.ts + 1.0 + bias)       # each record ran on the model it names
    switch = np.flatnonzero(version != first_version)
    assert len(switch) and (switch == np.arange(switch[0], n)).all()  # one clean switch, no flapping
    assert futures[0].result(timeout=5) == version[-1] and stage.ctx.metrics.get("under_test", "model_swaps") == 1


@pytest.mark.parametrize("make_bad, why", [
    (lambda p: p.write_bytes(b"garbage") and p, "onnxruntime cannot load"),
    (lambda p: sum_plus(p, features=4), "model input 'x' is [batch, 4] float32 but the config builds [batch, 3]"),
    (lambda p: _four_values_as_y(p), "gives 'y' of shape (4, 4) where the running model gives (4, 1)"),
])
def test_a_bad_new_model_is_refused_and_the_old_one_keeps_serving(tmp_path, make_bad, why):
    stage = stage_for(sum_plus(tmp_path / "m.onnx", bias=1.0))
    before = stage.process(batch(0)).fields["y"].tolist()
    bad = tmp_path / "new.onnx"
    make_bad(bad)
    fut = stage.request_swap(bad)
    with pytest.raises(Exception, match=re.escape(why)):
        fut.result(timeout=10)
    assert stage.process(batch(0)).fields["y"].tolist() == before
    assert stage.swap_events[-1]["ok"] is False and why.split(" [")[0] in stage.swap_events[-1]["error"]
    assert stage.ctx.metrics.get("under_test", "model_swap_failures") == 1


def _four_values_as_y(path):
    """Same input, but an output 'y' with 4 values per record instead of 1."""
    import onnx
    classifier(path, features=3, classes=4)
    m = onnx.load(str(path))
    m.graph.output[0].name = m.graph.node[-1].output[0] = "y"
    onnx.save(m, str(path))
    return path


def test_pinned_model_needs_a_digest_for_swaps(tmp_path):
    old = sum_plus(tmp_path / "m.onnx", bias=1.0, sidecar=True)
    pin = (tmp_path / "m.onnx.sha256").read_text().split()[0]
    stage = stage_for(old, sha256=pin)
    new = sum_plus(tmp_path / "n.onnx", bias=2.0)
    with pytest.raises(Exception, match="has no sha256 to check against"):
        stage.request_swap(new).result(timeout=10)
    with pytest.raises(Exception, match="expected " + "1" * 64):
        stage.request_swap(new, sha256="1" * 64).result(timeout=10)
    digest = write_sidecar(new)
    fut = stage.request_swap(new, sha256=digest)
    assert wait_for(lambda: stage.process(batch(0)) is not None and fut.done())  # swapped in between batches
    assert fut.result().startswith("n@") and stage.process(batch(0)).fields["y"][0] == 0 + 1 + 2.0


def test_watch_follows_the_current_pointer_of_a_versioned_folder(tmp_path):
    root = tmp_path / "models"
    sum_plus(root / "v1" / "m.onnx", bias=1.0, sidecar=True)
    sum_plus(root / "v2" / "m.onnx", bias=2.0, sidecar=True)
    (root / "current").write_text("v1\n")
    stage = stage_for(root, watch=0.02)
    try:
        out = stage.process(batch(0, 1))
        assert out.tags["model_version"].tolist() == ["v1"] and out.fields["y"][0] == 2.0
        (root / "current").write_text("v2\n")
        assert wait_for(lambda: stage.process(batch(0, 1)).tags["model_version"][0] == "v2")
        (root / "v2" / "m.onnx").write_bytes(b"half-written")  # broken in place: refused, v2 keeps serving
        (root / "current").write_text("v1\n")
        (root / "v1" / "m.onnx").write_bytes((root / "v1" / "m.onnx").read_bytes() + b"x")  # tampered v1
        assert wait_for(lambda: any(not e["ok"] for e in stage.swap_events))
        assert stage.process(batch(0, 1)).tags["model_version"][0] == "v2"
    finally:
        stage.close()


def test_re_reading_a_pinned_file_without_sidecar_holds_it_to_the_pin(tmp_path):
    model = sum_plus(tmp_path / "m.onnx", bias=1.0)
    pin = write_sidecar(model)
    (tmp_path / "m.onnx.sha256").unlink()
    stage = stage_for(model, sha256=pin)
    fut = stage.request_swap()                       # same file, unchanged: accepted against the pin
    assert wait_for(lambda: stage.process(batch(0, 1)) is not None and fut.done())
    assert fut.exception() is None
    sum_plus(model, bias=5.0)                        # replaced without a new digest: refused
    with pytest.raises(Exception, match="expected " + pin):
        stage.request_swap().result(timeout=10)
    assert stage.process(batch(0, 1)).fields["y"][0] == 0 + 1 + 1.0


@pytest.mark.slow
def test_swap_while_the_threaded_runtime_replays_readings(tmp_path):
    """The real runtime: replay source paced at 100x, the `current` pointer flips mid-run, ticks apply the swap."""
    import json

    from pipeline import load_pipeline

    root = tmp_path / "models"
    sum_plus(root / "v1" / "m.onnx", bias=100.0, sidecar=True)
    sum_plus(root / "v2" / "m.onnx", bias=200.0, sidecar=True)
    (root / "current").write_text("v1")
    csv = tmp_path / "r.csv"
    csv.write_text("ts,a,b,c\n" + "".join(f"{1000 + i},{i},1,0\n" for i in range(300)))
    (tmp_path / "p.yaml").write_text(json.dumps({
        "sources": [{"id": "r", "type": "replay", "path": str(csv), "speed": 100, "chunk_size": 5}],
        "stages": [{"id": "m", "type": "onnx", "inputs": ["r"], "model": str(root), "watch": 0.05,
                    "feeds": FEEDS, "outputs": {"y": {"decode": "regression"}}, "max_batch": 8, "max_wait": 0.05}],
        "sinks": [{"id": "out", "type": "file", "inputs": ["m"], "path": str(tmp_path / "out.ndjson")}],
        "runtime": {"dead_letter": None}}))
    pipe = load_pipeline(tmp_path / "p.yaml")
    flip = threading.Timer(1.0, lambda: (root / "current").write_text("v2"))
    flip.start()
    pipe.run()
    flip.join()
    rows = [json.loads(line) for line in (tmp_path / "out.ndjson").read_text().splitlines()]
    assert sorted(r["fields"]["a"] for r in rows) == list(range(300))              # none lost, none twice
    for r in rows:
        bias = {"v1": 100.0, "v2": 200.0}[r["tags"]["model_version"]]
        assert r["fields"]["y"] == r["fields"]["a"] + 1 + bias
    versions = [r["tags"]["model_version"] for r in sorted(rows, key=lambda r: r["ts"])]
    assert versions[0] == "v1" and versions[-1] == "v2"
    assert versions == sorted(versions)                                             # one switch
