"""``edgesieve quantize IN.onnx OUT.onnx [--calibration DATA]``: int8 quantization with a before/after report.

With ``--calibration`` (a ``.npz`` whose keys are the model's input names, or a ``.npy`` for a
single-input model; the first axis is records) the model is quantized *statically* (QDQ int8,
activations calibrated on that data) unless ``--mode dynamic`` is given; without it, *dynamically*
(int8 weights, activations quantized at run time). The report compares the two models on the
calibration data (or, without it, on random inputs of the declared shapes, which says little about
accuracy): file size, records/s, and per output the largest / mean absolute difference and, for
class scores, how often the top class agrees. ``OUT.sha256`` is written beside the new model.

>>> import tempfile, pathlib
>>> main([str(pathlib.Path(tempfile.mkdtemp()) / "missing.onnx"), "out.onnx"])
1
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .inference.model import ORT_DTYPES


def _session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def load_calibration(path: Path, sess) -> dict[str, np.ndarray]:
    """Arrays per model input from ``.npz`` (keys = input names) or ``.npy`` (single input)."""
    inputs = sess.get_inputs()
    if path.suffix == ".npy":
        if len(inputs) != 1:
            raise ValueError(f"{path}: a .npy file feeds a single-input model, but this one has inputs "
                             f"{', '.join(i.name for i in inputs)}; use a .npz with one array per input name")
        data = {inputs[0].name: np.load(path)}
    else:
        with np.load(path) as npz:
            data = {k: npz[k] for k in npz.files}
    missing = [i.name for i in inputs if i.name not in data]
    if missing:
        raise ValueError(f"{path}: no array for model input(s) {', '.join(missing)} (it has: {', '.join(data)})")
    out = {}
    for i in inputs:
        arr = np.asarray(data[i.name], dtype=ORT_DTYPES.get(i.type, np.float32))
        if arr.ndim != len(i.shape) or any(isinstance(d, int) and d != a for d, a in zip(i.shape[1:], arr.shape[1:])):
            raise ValueError(f"{path}: array {i.name!r} has shape {arr.shape}, the model expects {i.shape}")
        out[i.name] = arr
    return out


def random_inputs(sess, n: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for i in sess.get_inputs():
        shape = [n] + [d if isinstance(d, int) else 1 for d in i.shape[1:]]
        out[i.name] = rng.random(shape).astype(ORT_DTYPES.get(i.type, np.float32))
    return out


class _Reader:
    """onnxruntime CalibrationDataReader over the calibration arrays, a few records at a time."""

    def __init__(self, data: dict[str, np.ndarray], batch: int):
        n = len(next(iter(data.values())))
        self._chunks = iter([{k: v[s:s + batch] for k, v in data.items()} for s in range(0, n, batch)])

    def get_next(self):
        return next(self._chunks, None)


def _run_all(sess, data: dict[str, np.ndarray], batch: int) -> list[np.ndarray]:
    n = len(next(iter(data.values())))
    parts = [sess.run(None, {k: v[s:s + batch] for k, v in data.items()}) for s in range(0, n, batch)]
    return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]


def _speeds(a, b, data: dict[str, np.ndarray], batch: int, seconds: float) -> tuple[float, float]:
    """records/s of both sessions from their fastest full pass, passes alternating (fair on a busy machine)."""
    n = len(next(iter(data.values())))
    best = [float("inf"), float("inf")]
    _run_all(a, data, batch), _run_all(b, data, batch)  # warm-up
    start, rounds = time.perf_counter(), 0
    while rounds < 3 or time.perf_counter() - start < seconds:
        for i, sess in enumerate((a, b)):
            t0 = time.perf_counter()
            _run_all(sess, data, batch)
            best[i] = min(best[i], time.perf_counter() - t0)
        rounds += 1
    return n / best[0], n / best[1]


def compare(src: Path, dst: Path, data: dict[str, np.ndarray], batch: int, threads: int, seconds: float) -> dict:
    a, b = _session(src, threads), _session(dst, threads)
    before, after = _run_all(a, data, batch), _run_all(b, data, batch)
    outputs = {}
    for meta, x, y in zip(a.get_outputs(), before, after):
        x64, y64 = x.astype(np.float64), y.astype(np.float64)
        row = {"max_abs_diff": float(np.abs(x64 - y64).max()), "mean_abs_diff": float(np.abs(x64 - y64).mean()),
               "mean_abs_value": float(np.abs(x64).mean())}
        if x.ndim == 2 and x.shape[1] > 1:
            row["top1_agreement"] = float((x.argmax(1) == y.argmax(1)).mean())
        outputs[meta.name] = row
    speed_a, speed_b = _speeds(a, b, data, batch, seconds)
    return {"records": int(len(next(iter(data.values())))), "batch": batch,
            "size_bytes": [src.stat().st_size, dst.stat().st_size],
            "records_per_s": [round(speed_a, 1), round(speed_b, 1)], "speedup": round(speed_b / speed_a, 3),
            "outputs": outputs}


def quantize(src: Path, dst: Path, calibration: dict[str, np.ndarray] | None, mode: str, per_channel: bool) -> str:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:  # fold constants and infer shapes first (recommended by onnxruntime); optional
            quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        except Exception:  # noqa: BLE001 - a model the pre-processor cannot handle is quantized as it is
            prepared = src
        if mode == "static":
            reader = _Reader(calibration, 8)
            CalibrationDataReader.register(_Reader)
            quantize_static(str(prepared), str(dst), reader, quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
        else:
            quantize_dynamic(str(prepared), str(dst), per_channel=per_channel, weight_type=QuantType.QInt8)
    digest = hashlib.sha256(dst.read_bytes()).hexdigest()
    dst.with_name(dst.name + ".sha256").write_text(f"{digest}  {dst.name}\n")
    return digest


def _print_report(r: dict, out) -> None:
    sb, sa = r["size_bytes"]
    vb, va = r["records_per_s"]
    print(f"mode {r['mode']} on {r['data']} ({r['records']} records, batch {r['batch']})", file=out)
    print(f"  size        {sb:>12,} B -> {sa:>12,} B  ({sa / sb:.2f}x)", file=out)
    print(f"  records/s   {vb:>12,.1f}   -> {va:>12,.1f}    ({r['speedup']:.2f}x)", file=out)
    for name, o in r["outputs"].items():
        extra = f", top-1 agreement {100 * o['top1_agreement']:.1f}%" if "top1_agreement" in o else ""
        print(f"  output {name!r}: max |diff| {o['max_abs_diff']:.4g}, mean |diff| {o['mean_abs_diff']:.4g} "
              f"(mean |value| {o['mean_abs_value']:.4g}){extra}", file=out)
    print(f"  wrote {r['output']} (sha256 {r['sha256']})", file=out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="edgesieve quantize", description=__doc__.splitlines()[0])
    ap.add_argument("input", type=Path, help="model to quantize (.onnx)")
    ap.add_argument("output", type=Path, help="where to write the int8 model")
    ap.add_argument("--calibration", type=Path, help=".npz (one array per input name) or .npy (single input)")
    ap.add_argument("--mode", choices=["auto", "static", "dynamic"], default="auto",
                    help="auto: static with --calibration, else dynamic")
    ap.add_argument("--per-channel", action="store_true", help="per-channel weight scales (better accuracy for convolutions)")
    ap.add_argument("--batch", type=int, default=8, help="records per call when comparing speed (default 8)")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads for the comparison")
    ap.add_argument("--seconds", type=float, default=1.0, help="time spent measuring each model's speed")
    ap.add_argument("--report", type=Path, help="also write the report as JSON here")
    args = ap.parse_args(argv)
    err = sys.stderr
    if not args.input.is_file():
        print(f"edgesieve quantize: {args.input}: no such model file", file=err)
        return 1
    try:
        sess = _session(args.input, args.threads)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several types
        print(f"edgesieve quantize: {args.input}: onnxruntime cannot load it: {str(exc).splitlines()[0]}", file=err)
        return 1
    mode = args.mode if args.mode != "auto" else ("static" if args.calibration else "dynamic")
    if mode == "static" and not args.calibration:
        print("edgesieve quantize: --mode static needs --calibration DATA (.npz/.npy of representative inputs)", file=err)
        return 1
    try:
        data = load_calibration(args.calibration, sess) if args.calibration else random_inputs(sess)
    except (OSError, ValueError) as exc:
        print(f"edgesieve quantize: calibration data: {exc}", file=err)
        return 1
    try:
        digest = quantize(args.input, args.output, data if mode == "static" else None, mode, args.per_channel)
    except Exception as exc:  # noqa: BLE001 - report, do not trace back
        print(f"edgesieve quantize: onnxruntime could not quantize {args.input} ({mode}): {exc}", file=err)
        return 1
    report = compare(args.input, args.output, data, args.batch, args.threads, args.seconds)
    report.update(mode=mode, output=str(args.output), sha256=digest,
                  data=str(args.calibration) if args.calibration else "random inputs (no --calibration: agreement is only indicative)")
    _print_report(report, sys.stdout)
    if args.report:
        args.report.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
