"""The window stage against an independent per-window computation with plain numpy."""

import numpy as np
import pytest

from pipeline.stages.window import Window
from pipeline.testing import build_stage, run_stage
from pipeline.batch import Batch
from tests.support.windows import AGGS, check, reference


def make_records(n=3000, devices=7, seed=1, jitter=0.0):
    rng = np.random.default_rng(seed)
    ts = 1_700_000_000 + np.sort(rng.uniform(0, 300, n))
    if jitter:
        ts = ts + rng.uniform(-jitter, 0, n)
    recs = []
    for i in range(n):
        fields = {"t": float(rng.normal(20, 3)), "p": float(rng.normal(1, 0.2))}
        if i % 11 == 0:
            del fields["p"]  # absent values are skipped, not zero
        recs.append({"ts": float(ts[i]), "tags": {"site": "s1", "device": f"d{rng.integers(devices)}"}, "fields": fields})
    return recs


@pytest.mark.parametrize("hop", [None, 5.0, 2.5])
def test_aggregates_match_independent_computation(hop):
    records = make_records()
    opts = {"size": "10s", "key": ["device"], "aggregates": {"t": AGGS, "p": AGGS}}
    if hop:
        opts["hop"] = hop
    out = run_stage(Window, opts, records, batch_size=257)
    check(out, reference(records, 10.0, hop or 10.0, ["t", "p"], AGGS))


def test_output_does_not_depend_on_batching():
    records = make_records(jitter=4.0)
    opts = {"size": "10s", "key": ["site", "device"], "aggregates": {"t": ["mean", "p95"]}, "allowed_lateness": "2s"}
    outputs = [run_stage(Window, opts, records, batch_size=b) for b in (1, 64, 1000, 5000)]
    assert all(o == outputs[0] for o in outputs[1:])


@pytest.mark.parametrize("watermark", ["per_key", "global"])
def test_late_records_are_counted_and_excluded(watermark):
    records = make_records(jitter=6.0, seed=3)
    opts = {"size": "10s", "key": ["device"], "aggregates": {"t": ["count", "sum", "max"]}, "allowed_lateness": "2s",
            "late": "dead_letter", "watermark": watermark}
    stage, dead = build_stage(Window, opts)
    out = []
    for i in range(0, len(records), 100):
        out.append(stage.process(Batch.from_records(records[i:i + 100])))
    out.append(stage.flush())
    check(Batch.concat(out).to_records(), reference(records, 10.0, 10.0, ["t"], ["count", "sum", "max"], lateness=2.0,
                                                    per_key=watermark == "per_key"))
    late = stage.ctx.metrics.get("under_test", "late")
    assert late > 0
    assert sum(len(recs) for _, recs, _ in dead) == late
    assert "arrived after its window closed" in dead[0][2][0]


def test_snapshot_restore_mid_stream_gives_identical_output():
    records = make_records(jitter=3.0, seed=5)
    opts = {"size": "10s", "key": ["device"], "aggregates": {"t": ["mean", "p50", "last"]}, "allowed_lateness": "3s"}
    whole = run_stage(Window, opts, records, batch_size=100)
    first, _ = build_stage(Window, opts)
    out = [first.process(Batch.from_records(records[i:i + 100])) for i in range(0, 1500, 100)]
    from pipeline.statefiles import roundtrip
    state = roundtrip(first.snapshot())
    second, _ = build_stage(Window, opts)
    second.restore(state)
    out += [second.process(Batch.from_records(records[i:i + 100])) for i in range(1500, len(records), 100)]
    out.append(second.flush())
    assert Batch.concat(out).to_records() == whole


def test_non_numeric_values_are_dead_lettered_not_aggregated():
    stage, dead = build_stage(Window, {"size": 10, "aggregates": {"t": ["sum"]}})
    batch = Batch.from_records([{"ts": 1, "fields": {"t": 1.0}}, {"ts": 2, "fields": {"t": "x"}}, {"ts": 3, "fields": {"t": 2.0}}])
    out = Batch.concat([stage.process(batch), stage.flush()]).to_records()
    assert out[0]["fields"] == {"count": 2, "t_sum": 3.0}
    assert dead[0][2] == ["stage 'under_test': field 't' is 'x', not a number"]


def test_hop_longer_than_size_is_rejected():
    with pytest.raises(Exception, match="hop"):
        Window.Config.model_validate({"id": "w", "type": "window", "inputs": ["a"], "size": "5s", "hop": "10s",
                                      "aggregates": {"t": ["mean"]}})


def test_idle_close_then_a_record_for_the_closed_window_is_late_not_a_second_copy():
    from pipeline.testing import FakeClock
    clock = FakeClock(1000.0)
    stage, _ = build_stage(Window, {"size": "10s", "aggregates": {"t": ["count", "mean"]}, "idle_close": "15s"}, clock=clock)
    first = stage.process(Batch.from_records([{"ts": 1.0, "fields": {"t": 1.0}}, {"ts": 2.0, "fields": {"t": 2.0}}]))
    assert len(first) == 0
    clock.advance(20)
    closed = stage.tick(clock())
    assert closed.to_records() == [{"ts": 0.0, "tags": {}, "fields": {"count": 2, "t_count": 2, "t_mean": 1.5}}]
    after = stage.process(Batch.from_records([{"ts": 3.0, "fields": {"t": 100.0}}]))
    assert len(after) == 0 and len(stage.flush() or Batch.empty()) == 0
    assert stage.ctx.metrics.get("under_test", "late") == 1


def test_event_records_are_not_aggregated():
    stage, _ = build_stage(Window, {"size": 10, "key": ["device"], "aggregates": {"t": ["count"]}})
    batch = Batch.from_records([{"ts": 1.0, "tags": {"device": "a"}, "fields": {"t": 1.0}},
                                {"ts": 2.0, "tags": {"device": "a"}, "fields": {"t": 9.0}, "event": "anomaly_end"}])
    out = Batch.concat([stage.process(batch), stage.flush()]).to_records()
    assert [r["fields"]["count"] for r in out] == [1]
    assert stage.ctx.metrics.get("under_test", "events_skipped") == 1
