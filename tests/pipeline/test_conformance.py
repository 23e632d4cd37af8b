"""Every registered stage type honours the batch contract (docs/architecture.md)."""

import copy

import numpy as np
import pytest

from pipeline import registry
from pipeline.batch import Batch
from pipeline.statefiles import roundtrip
from pipeline.testing import build_stage


def _frozen(batch: Batch):
    """A deep copy of every column, to compare against after the stage ran."""
    return copy.deepcopy((batch.ts, batch.tags, batch.fields, batch.frames, batch.extra))


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, tuple):
        return all(_same(x, y) for x, y in zip(a, b))
    if a is None or b is None:
        return a is b
    if a.dtype == object:
        return all(_same(x, y) if isinstance(x, np.ndarray) else (x == y or (x != x and y != y)) for x, y in zip(a, b))
    return np.array_equal(a, b, equal_nan=True)


@pytest.mark.parametrize("type_name", sorted(registry.STAGES))
def test_stage_honours_batch_contract(type_name, tmp_path):
    cls = registry.load("stages", type_name)
    stage, dead = build_stage(cls, dict(cls.EXAMPLE), state_dir=tmp_path)
    good = Batch.from_records(cls.sample_records())
    bad_record = cls.sample_bad_record()
    batch = Batch.from_records(cls.sample_records() + ([bad_record] if bad_record else []))
    before = _frozen(batch)

    out = stage.process(batch)
    flushed = stage.flush()

    assert isinstance(out, Batch)
    assert _same(before, _frozen(batch)), f"{type_name} mutated its input batch"
    assert flushed is None or isinstance(flushed, Batch)
    if bad_record:
        rejected = [r for _, recs, _ in dead for r in recs]
        assert rejected, f"{type_name} did not dead-letter the bad record"
        assert stage.ctx.metrics.get("under_test", "dead_lettered") == len(rejected)
        reasons = [r for _, _, rs in dead for r in ([rs] if isinstance(rs, str) else rs)]
        assert all("under_test" in r for r in reasons), f"{type_name}: a reason does not name the stage id: {reasons}"
    # fewer records out than good records in must be counted (filtered, reused, windowed, ...), never silent
    total_out = len(out) + (len(flushed) if flushed is not None else 0)
    if total_out < len(good) and type_name != "window":
        counters = stage.ctx.metrics.by_item().get("under_test", {})
        assert sum(v for k, v in counters.items() if k not in ("dead_lettered",)) > 0, f"{type_name} dropped records silently"


@pytest.mark.parametrize("type_name", sorted(registry.STAGES))
def test_stage_is_documented(type_name):
    cls = registry.load("stages", type_name)
    module = __import__(cls.__module__, fromlist=["_"])
    assert ">>>" in (module.__doc__ or "") + (cls.__doc__ or ""), f"{type_name} has no doctest example"
    assert module.__name__.rsplit(".", 1)[-1] == type_name, "the module name must equal the type name"
    for name, info in cls.Config.model_fields.items():
        assert name == "type" or info.description, f"{type_name}.{name} has no description"
    assert cls.Config.model_config.get("extra") == "forbid"


@pytest.mark.parametrize("type_name", sorted(registry.STAGES))
def test_stage_state_is_data_and_a_restart_from_it_gives_the_same_output(type_name, tmp_path):
    """The state a checkpoint stores (`snapshot_changes`, through the state codec: no pickle) restores a stage
    that continues exactly as the uninterrupted one."""
    cls = registry.load("stages", type_name)
    records = cls.sample_records()
    half = len(records) // 2
    whole, _ = build_stage(cls, dict(cls.EXAMPLE), state_dir=tmp_path / "whole")
    expected = [whole.process(Batch.from_records(records[:half])), whole.process(Batch.from_records(records[half:])),
                whole.flush()]
    first, _ = build_stage(cls, dict(cls.EXAMPLE), state_dir=tmp_path / "first")
    got = [first.process(Batch.from_records(records[:half]))]
    changes = first.snapshot_changes()
    entries = {roundtrip(k): roundtrip(v) for k, v in changes.entries.items() if v is not None}
    restarted, _ = build_stage(cls, dict(cls.EXAMPLE), state_dir=tmp_path / "restarted")
    restarted.restore_entries(entries)
    got += [restarted.process(Batch.from_records(records[half:])), restarted.flush()]
    for a, b in zip(expected, got):
        assert (a is None or not len(a)) == (b is None or not len(b)), type_name
        if a is not None and len(a):
            assert _same(_frozen(a), _frozen(b)), f"{type_name} continued differently after a restore"
