"""Records/s of the ``onnx`` stage vs raw ``InferenceSession.run`` on the same pre-built batches.

Models: the example camera model (``examples/models/camera_counter.onnx``, 1x96x128 gray, ~8 MMAC),
the example pump model (``pump_state.onnx``, a 60x8 window per record, tiny) and a standard
CNN-sized classifier generated here (3x224x224 -> 1000 classes, ~0.2 GMAC, random weights).
Batch sizes 1, 8, 32; one intra-op thread for both sides (same session options).

* raw:   ``sess.run(None, {input: tensor})`` on pre-built float32 tensors (no preprocessing, no decode)
* stage: ``Onnx.process(batch)`` on pre-built Batches of the same records (uint8 frames at model
  resolution, or readings whose windows the stage keeps itself), so the stage does its real per-record
  work: validation, building the tensor (scale/colour/layout or the window), inference, decode, tags
* stage+resize (camera only): the same with full 768x576 BGR frames, so resize + grayscale are included

Targets (issue 5): stage >= 90% of raw at batch 32; batch 32 >= 4x the records/s of batch 1 (stage).
For one model, the calls of every batch size and both sides are interleaved one by one, and each
figure comes from the fastest call (timeit's rule), so all see the same load on a shared machine.

    python benchmarks/bench_onnx.py [--seconds 3] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.batch import Batch  # noqa: E402
from pipeline.stages.onnx import SKAB_SENSORS, Onnx  # noqa: E402
from pipeline.testing import build_stage  # noqa: E402
from tests.support.onnx_models import cnn  # noqa: E402


def raw_session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def interleaved_rates(variants: dict, seconds: float) -> dict[str, float]:
    """records/s per variant from its fastest call, all variants' calls interleaved one by one.

    ``variants``: name -> (function, items, records per item). On a shared machine load comes and
    goes; interleaving puts every variant under the same load, and the fastest call (timeit's rule)
    is the one least disturbed by other work."""
    times = {k: [] for k in variants}
    for fn, items, _ in variants.values():
        fn(items[0])  # warm-up
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or min(len(t) for t in times.values()) < 5:
        for i in range(max(len(items) for _, items, _ in variants.values())):
            for k, (fn, items, _) in variants.items():
                t0 = time.perf_counter()
                fn(items[i % len(items)])
                times[k].append(time.perf_counter() - t0)
    return {k: variants[k][2] / min(t) for k, t in times.items()}


def bench_case(name, model, cfg, tensors, records, batch_sizes, seconds, warm=(), extra=None):
    """Raw session on ``tensors[i]`` vs the stage on ``records[i]`` (the same records), per batch size.

    ``extra``: an optional second record list (e.g. full-resolution frames) measured as ``stage+resize``."""
    sess = raw_session(model)
    input_name = sess.get_inputs()[0].name
    variants = {}
    for b in batch_sizes:  # every batch size and both sides in one interleaved measurement
        n_items = max(2, 64 // b)
        variants[("raw", b)] = (lambda feed: sess.run(None, feed),
                                [{input_name: tensors[i * b:(i + 1) * b]} for i in range(n_items)], b)
        for label, recs in (("stage", records), ("stage+resize", extra)):
            if recs is None:
                continue
            stage, _ = build_stage(Onnx, {**cfg, "model": str(model), "max_batch": b, "intra_op_threads": 1})
            if warm:
                stage.process(Batch.from_records(warm))
            variants[(label, b)] = (stage.process, [Batch.from_records(recs[i * b:(i + 1) * b]) for i in range(n_items)], b)
    got = interleaved_rates(variants, seconds)
    return [{"model": name, "batch": b, **{k: round(v, 1) for (k, bb), v in got.items() if bb == b}} for b in batch_sizes]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="measuring time per model")
    ap.add_argument("--json", type=Path, help="write the figures here too")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    sizes = [1, 8, 32]
    rows = []

    n = 64
    camera = ROOT / "examples" / "models" / "camera_counter.onnx"
    small = [rng.integers(0, 256, (96, 128), dtype=np.uint8) for _ in range(n)]
    full = [np.repeat(np.repeat(f, 6, 0), 6, 1)[..., None].repeat(3, 2) for f in small]  # 768x576 BGR, same content
    cam_cfg = {"feeds": {"frame": {"source": "frame"}},
               "outputs": {"count": {"decode": "regression", "field": "people"}, "occupancy": {"decode": "raw"}}}
    rows += bench_case("camera", camera, cam_cfg, (np.stack(small).astype(np.float32) / 255)[:, None],
                       [{"ts": float(i), "tags": {"cam": "c1"}, "frame": f} for i, f in enumerate(small)],
                       sizes, args.seconds,
                       extra=[{"ts": float(i), "tags": {"cam": "c1"}, "frame": f} for i, f in enumerate(full)])

    pump = ROOT / "examples" / "models" / "pump_state.onnx"
    readings = rng.normal(1.0, 0.1, (n + 59, len(SKAB_SENSORS)))
    recs = [{"ts": float(i), "tags": {"pump": "p1"}, "fields": dict(zip(SKAB_SENSORS, map(float, r)))}
            for i, r in enumerate(readings)]
    windows = np.lib.stride_tricks.sliding_window_view(readings, 60, axis=0).transpose(0, 2, 1).astype(np.float32)
    pump_cfg = {"feeds": {"window": {"source": "window", "length": 60, "key": ["pump"], "fields": SKAB_SENSORS}},
                "outputs": {"probabilities": {"decode": "label", "field": "state"}}}
    rows += bench_case("pump", pump, pump_cfg, np.ascontiguousarray(windows[:n]), recs[59:], sizes, args.seconds,
                       warm=recs[:59])

    with tempfile.TemporaryDirectory() as tmp:
        model = cnn(Path(tmp) / "cnn.onnx")
        images = [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(n)]
        cnn_cfg = {"feeds": {"image": {"source": "frame", "color": "rgb"}},
                   "outputs": {"logits": {"decode": "topk", "k": 5, "softmax": True,
                                          "labels": [f"class{i}" for i in range(1000)]}}}
        rows += bench_case("cnn224", model, cnn_cfg,
                           np.ascontiguousarray((np.stack(images)[..., ::-1].astype(np.float32) / 255).transpose(0, 3, 1, 2)),
                           [{"ts": float(i), "frame": f} for i, f in enumerate(images)], sizes, args.seconds)

    print(f"{'model':8} {'batch':>5} {'raw rec/s':>11} {'stage rec/s':>12} {'stage/raw':>9} {'stage+resize':>13}")
    for r in rows:
        resize = f"{r['stage+resize']:>13,.1f}" if "stage+resize" in r else f"{'-':>13}"
        print(f"{r['model']:8} {r['batch']:>5} {r['raw']:>11,.1f} {r['stage']:>12,.1f} {r['stage'] / r['raw']:>9.1%} {resize}")
    for m in ("camera", "pump", "cnn224"):
        by = {r["batch"]: r for r in rows if r["model"] == m}
        print(f"{m}: stage batch 32 / batch 1 = {by[32]['stage'] / by[1]['stage']:.1f}x; "
              f"stage/raw at batch 32 = {by[32]['stage'] / by[32]['raw']:.1%}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
