"""A reload that rebuilds a stage with per-key checkpoint entries leaves only the new instance's entries in the
checkpoint, so a restart after it restores the new stage's state, not a mix with the old one's."""

from pipeline.batch import Batch
from pipeline.checkpoint import CheckpointStore
from pipeline.reload import reload_graph
from pipeline.runtime import Pipeline
from pipeline.loader import parse_pipeline


def text(tmp_path, deviation):
    return f"""\
pipeline: p
sources: [{{id: in, type: replay, path: x.csv, tags: [device]}}]
stages:
  - {{id: band, type: deadband, inputs: [in], key: [device], fields: [t], deviation: {deviation}}}
  - {{id: hot, type: filter, inputs: [in], where: "t > 0"}}
sinks:
  - {{id: out, type: stdout, inputs: [band, hot]}}
runtime: {{checkpoint: {{path: {tmp_path / 'ckpt.db'}}}, state_dir: {tmp_path / 'state'}, dead_letter: null}}
"""


def readings(devices, t):
    return Batch.from_records([{"ts": t + i, "tags": {"device": d}, "fields": {"t": float(i)}} for i, d in enumerate(devices)])


def test_rebuilt_stage_replaces_its_checkpoint_entries(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(text(tmp_path, 1.0))
    p = Pipeline(parse_pipeline(f))
    p.graph.deliver = lambda *a: None
    p._restore({}, {})
    p.graph.push("in", readings(["a", "b", "c"], 1000))
    p._checkpoint({}, {}, {})
    assert set(CheckpointStore(tmp_path / "ckpt.db").load().items["stage:band"]) == {"a", "b", "c"}
    f.write_text(text(tmp_path, 2.0))                      # band changes, hot does not
    graph = reload_graph(p, f)
    assert graph is not None and graph.stages["hot"] is p.graph.stages["hot"]
    assert graph.stages["band"] is not p.graph.stages["band"]
    p.graph = graph
    p.graph.push("in", readings(["d"], 2000))
    p._checkpoint({}, {}, {})
    assert set(CheckpointStore(tmp_path / "ckpt.db").load().items["stage:band"]) == {"d"}
    p.graph.push("in", readings(["e"], 3000))               # later checkpoints are incremental again
    p._checkpoint({}, {}, {})
    assert set(CheckpointStore(tmp_path / "ckpt.db").load().items["stage:band"]) == {"d", "e"}
