"""Skip work without changing answers: frame_diff and the redundancy cache on a real video with the camera model.

Reference = the camera model (examples/models/camera_counter.onnx, people count) run on every frame.
For each policy we report the fraction of inferences skipped (by frame_diff, by the cache, together;
audits count as processed), the per-frame agreement with the reference in the model's own terms
(1 - |dcount| / max(count) on rounded counts), and the baseline "process every N-th frame" at the same
skip rate (fractional N, averaged over 8 phases). Per agreement target: the static setting with the most
skipping that meets it ("best static", chosen on the same frames, as offline profiling would), the
frame_diff setting chosen on the first half and measured on the second ("held-out half"), and the adaptive
guard online from a fixed start ("adaptive", audits count as processed). Speed: the pipeline's work per
frame (difference features + cache lookups + the model on the frames that need it) against the model on
every frame, in the same process (decoding excluded: it is the same for both).

    python benchmarks/bench_redundancy.py                  # full run (about a minute), writes docs/redundancy.png
    python benchmarks/bench_redundancy.py --frames 200     # quick look

Needs ../shared/data/video/vtest.avi and opencv-python-headless (dev dependency) to decode it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cache.differ import FrameDiffer  # noqa: E402
from cache.redundancy import RedundancyCache  # noqa: E402

QUIET = (slice(384, 576), slice(128, 384))      # bottom band, 256x192: people rarely cross it
TARGETS = (0.99, 0.97, 0.95)
GUARD = dict(min_audits=5, tighten=0.7, loosen=1.2, margin=0.0)   # frame_diff: guard_min_audits/tighten/loosen/margin


def decode(path: Path, limit: int | None) -> np.ndarray:
    import cv2
    cap = cv2.VideoCapture(str(path))
    frames = []
    while limit is None or len(frames) < limit:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(f, cv2.COLOR_BGR2GRAY))
    return np.stack(frames)


class Model:
    """The camera model as the onnx stage runs it: area-resize to 128x96, scale to 0..1, NCHW."""

    def __init__(self, path: Path):
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    @staticmethod
    def prepare(frames) -> np.ndarray:
        import cv2
        return np.stack([cv2.resize(f, (128, 96), interpolation=cv2.INTER_AREA) for f in frames])

    def __call__(self, small_u8: np.ndarray) -> np.ndarray:
        x = small_u8[:, None].astype(np.float32) / np.float32(255)
        return self.sess.run(["count"], {"frame": x})[0][:, 0]


def agreement(used: np.ndarray, ref: np.ndarray) -> np.ndarray:
    a, b = np.round(used), np.round(ref)
    m = np.maximum(np.abs(a), np.abs(b))
    return np.where(m == 0, 1.0, 1.0 - np.abs(a - b) / np.maximum(m, 1))


def every_nth(ref: np.ndarray, skip: float, phases: int = 8) -> float:
    """Agreement of 'process every N-th frame, reuse in between' at skip rate ``skip`` (fractional N)."""
    n = len(ref)
    out = []
    for ph in np.arange(phases) / phases:
        k = np.floor(np.arange(n) * (1 - skip) + ph)
        proc = np.r_[True, np.diff(k) > 0]
        idx = np.maximum.accumulate(np.where(proc, np.arange(n), 0))
        out.append(agreement(ref[idx], ref).mean())
    return float(np.mean(out))


def simulate(frames, small, ref, fd_kw=None, cache_kw=None, model=None, batch=1):
    """Stream frames through frame_diff -> cache -> model. With ``model`` None the reference outputs stand
    in for the model (it is deterministic); with a model it is really run (for timing)."""
    n = len(frames)
    fd = FrameDiffer(**fd_kw) if fd_kw is not None else None
    cache = (RedundancyCache(**cache_kw, key_fn=lambda v: str(round(float(v))).encode(),
                             agreement=lambda a, b: float(agreement(np.array([a]), np.array([b]))[0]))
             if cache_kw is not None else None)
    used = np.zeros(n)
    last = None
    n_model = n_fd_skip = n_cache_skip = 0
    for s in range(0, n, batch):
        rows = np.arange(s, min(s + batch, n))
        if fd is not None:
            d = fd.decide(["cam"] * len(rows), rows * 0.1, list(frames[rows]))
            proc = d.process
        else:
            proc = np.ones(len(rows), bool)
        todo = rows[proc]
        results = {}
        if len(todo):
            if cache is not None:
                look = cache.lookup(list(small[todo]), now=float(todo[0]) * 0.1)
                need = todo[look.compute]
                fresh = (model(small[need]) if model is not None else ref[need]) if len(need) else []
                vals = cache.complete(look, list(fresh))         # raw counts; neighbours agree on rounded
                n_cache_skip += int(len(todo) - len(need))
            else:
                need = todo
                vals = model(small[todo]) if model is not None else ref[todo]
            n_model += len(need)
            results = dict(zip(todo.tolist(), vals))
        for j, i in enumerate(rows):
            if i in results:
                if fd is not None and d.reason[j] == "audit" and last is not None:
                    fd.observe("cam", float(agreement(np.array([last]), np.array([results[i]]))[0]))
                if fd is not None and fd.confidence_power:
                    v = float(results[i])
                    fd.observe_confidence("cam", 1 - 2 * abs(v - round(v)))
                last = results[i]
            else:
                n_fd_skip += 1
            used[i] = last
    return {"skip_fd": n_fd_skip / n, "skip_cache": n_cache_skip / n, "skip": 1 - n_model / n,
            "agreement": float(agreement(used, ref).mean()) if ref is not None else None,
            "threshold": fd.stats()["cam"]["threshold"] if fd is not None else None,
            "cache": cache.stats() if cache is not None else None}


def scenes(video: np.ndarray):
    """The full frame; the quiet crop (resized to the model's input like any camera view: people appear
    larger than the model was trained on); the quiet region in place (full-frame geometry, everything
    outside the region frozen to the median background: people at the trained scale, only there)."""
    yield "full frame", video
    yield "quiet crop", np.ascontiguousarray(video[:, QUIET[0], QUIET[1]])
    frozen = np.repeat(np.median(video, axis=0).astype(video.dtype)[None], len(video), axis=0)
    frozen[:, QUIET[0], QUIET[1]] = video[:, QUIET[0], QUIET[1]]
    yield "quiet region in place", frozen


def policies(scene: str) -> dict:
    """name -> (function setting -> simulate kwargs, settings ascending). A busy scene gets a forced refresh
    every 3rd frame, a quiet one every 30th (3 s): a deployment choice per camera."""
    refresh, ds = (3, 8) if scene == "full frame" else (30, 4)
    conf = dict(feature="pixel", pixel_threshold=15.0, downscale=ds, audit_rate=0.0, confidence_power=1.0,
                refresh_frames=refresh)
    cache = dict(k=3, min_neighbors=2, audit_rate=0.0, adaptive=False, max_entries=256)
    return {
        "frame_diff": (lambda t: {"fd_kw": dict(feature="pixel", threshold=t, downscale=8, audit_rate=0.0)},
                       [0.004, 0.008, 0.012, 0.02, 0.03, 0.05, 0.08, 0.12]),
        "frame_diff+conf": (lambda t: {"fd_kw": dict(conf, threshold=t)},
                            [0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3]),
        "cache": (lambda r: {"cache_kw": dict(cache, radius=r)}, [2.0, 3.0, 4.0, 6.0, 8.0, 12.0]),
        "together": (lambda t: {"fd_kw": dict(conf, threshold=t), "cache_kw": dict(cache, radius=4.0)},
                     [0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3]),
    }


def pick(curve, target):
    """The setting with the most skipping whose agreement meets ``target`` (None if none does)."""
    ok = [(r["skip"], g, r) for g, r in curve if r["agreement"] >= target]
    return max(ok, key=lambda x: (x[0], x[1]))[1:] if ok else (None, None)   # ties: the larger setting


def speed(frames, model, fd_kw, cache_kw, repeats=5):
    """Frames/s of the policy (really running the model) and of the model on every frame: best of ``repeats``
    runs each, interleaved, so that a busy neighbour on a shared machine slows both alike."""
    def timed(fn):
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def every():        # the same harness with nothing skipped: resize + model on every frame
        simulate(frames, _Lazy(frames), None, None, None, model=_Prepared(model))

    def policy():
        # the small model input is computed only for frames frame_diff lets through (inside the model call)
        simulate(frames, _Lazy(frames), None, fd_kw, cache_kw, model=_Prepared(model))

    tp, te = [], []
    for _ in range(repeats):
        tp.append(timed(policy))
        te.append(timed(every))
    return len(frames) / min(tp), len(frames) / min(te)


class _Lazy:
    """Model inputs computed on demand (so the policy pays the resize only for frames it processes)."""

    def __init__(self, frames):
        self.frames = frames

    def __getitem__(self, idx):
        return Model.prepare(self.frames[idx])


class _Prepared:
    def __init__(self, model):
        self.model = model

    def __call__(self, small):
        return self.model(small)


def through_pipeline(frames, model_path: Path, fd_kw: dict, ref: np.ndarray, batch: int = 1) -> dict:
    """The same policy as real stages (frame_diff -> onnx with `reuse:`) in a pipeline, against a pipeline
    with the onnx stage alone; frames/s of each (best of 3 interleaved), skip and agreement from the output."""
    from pipeline import load_pipeline
    diff = {k: v for k, v in fd_kw.items() if k not in ("guard", "audit_rate")}
    diff.update(audit_rate=fd_kw.get("audit_rate", 0.0))
    onnx = {"id": "count", "type": "onnx", "model": str(model_path), "feeds": {"frame": {"source": "frame"}},
            "outputs": {"count": {"decode": "regression", "field": "people"}},
            "reuse": {"agreement": "count", "confidence": "rounding"}}

    def spec(with_diff: bool) -> str:
        stages = ([{"id": "diff", "type": "frame_diff", "inputs": ["cams"], **diff}] if with_diff else [])
        stages.append({**onnx, "inputs": ["diff" if with_diff else "cams"]})
        return json.dumps({"pipeline": "bench-redundancy", "sources": [{"id": "cams", "type": "replay", "path": "x"}],
                           "stages": stages, "sinks": [{"id": "out", "type": "stdout", "inputs": ["count"]}]}) + "\n"

    recs = [{"ts": i * 0.1, "tags": {"device": "cam"}, "frame": f} for i, f in enumerate(frames)]
    times = {True: [], False: []}
    for _ in range(3):
        for with_diff in (True, False):
            p = load_pipeline(spec(with_diff))
            t0 = time.perf_counter()
            out = p.run_records(recs, batch_size=batch)["out"]
            times[with_diff].append(time.perf_counter() - t0)
            people = np.array([r["fields"]["people"] for r in out])
            if with_diff:
                used, skip = people, p.metrics.get("diff", "reused") / len(recs)
            else:
                every = people              # the reference as the onnx stage computes it
    return {"skip": skip, "agreement": float(agreement(used, every).mean()),
            "agreement_vs_benchmark_reference": float(agreement(used, ref).mean()),
            "fps": len(recs) / min(times[True]), "fps_every_frame": len(recs) / min(times[False])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--video", type=Path, default=ROOT.parent / "shared/data/video/vtest.avi")
    ap.add_argument("--model", type=Path, default=ROOT / "examples/models/camera_counter.onnx")
    ap.add_argument("--frames", type=int, default=None, help="only the first N frames")
    ap.add_argument("--plot", type=Path, default=ROOT / "docs/redundancy.png")
    ap.add_argument("--json", type=Path, default=None, help="also write all figures here")
    args = ap.parse_args(argv)
    if not args.video.exists():
        print(f"skipped: {args.video} is missing (the shared data folder is not beside the checkout)")
        return 0
    if not args.model.exists():
        print(f"skipped: {args.model} is missing (the camera model is built by the onnx work)")
        return 0
    t0 = time.perf_counter()
    video = decode(args.video, args.frames)
    model = Model(args.model)
    report = {}
    for scene, frames in scenes(video):
        small = Model.prepare(frames)
        ref = np.concatenate([model(small[i:i + 64]) for i in range(0, len(small), 64)])
        pol = policies(scene)
        curves = {name: [(g, simulate(frames, small, ref, **make(g))) for g in grid] for name, (make, grid) in pol.items()}
        rows = []
        for target in TARGETS:
            for name, (make, _) in pol.items():
                g, r = pick(curves[name], target)
                if r is not None:
                    rows.append(dict(r, policy=name, target=target, setting=g, kind="best static",
                                     every_nth=every_nth(ref, r["skip"]), kw=make(g)))
            # held out: the frame_diff+conf setting picked on the first half, measured on the second
            make, grid = pol["frame_diff+conf"]
            half = len(frames) // 2
            cal = [(g, simulate(frames[:half], small[:half], ref[:half], **make(g))) for g in grid]
            g, _ = pick(cal, target)
            if g is not None:
                r = simulate(frames[half:], small[half:], ref[half:], **make(g))
                rows.append(dict(r, policy="frame_diff+conf", target=target, setting=g, kind="held-out half",
                                 every_nth=every_nth(ref[half:], r["skip"])))
            # online: the adaptive guard from a fixed start, audits (5% of reused frames) count as processed
            fd = dict(pol["frame_diff+conf"][0](0.1)["fd_kw"], audit_rate=0.05, adaptive=True, target=target,
                      seed=1, guard=GUARD)
            r = simulate(frames, small, ref, fd_kw=fd)
            rows.append(dict(r, policy="frame_diff+conf", target=target, setting=0.1, kind="adaptive",
                             every_nth=every_nth(ref, r["skip"])))
        report[scene] = {"rows": rows, "curves": curves,
                         "every_nth_curve": [(x, every_nth(ref, x)) for x in np.linspace(0, 0.97, 25)]}
    for scene, frames in scenes(video):
        target = 0.95 if scene == "full frame" else 0.99
        for r in report[scene]["rows"]:
            if r["target"] == target and r["kind"] == "best static" and r["policy"] in ("frame_diff+conf", "together"):
                r["fps"], r["fps_every_frame"] = speed(frames, model, r["kw"].get("fd_kw"), r["kw"].get("cache_kw"))
    print_tables(report)
    best = next(r for r in report["full frame"]["rows"]
                if r["target"] == 0.95 and r["kind"] == "best static" and r["policy"] == "frame_diff+conf")
    small = Model.prepare(video)
    ref = np.concatenate([model(small[i:i + 64]) for i in range(0, len(small), 64)])
    pc = through_pipeline(video, args.model, best["kw"]["fd_kw"], ref)
    print(f"\nthrough the real stages (frame_diff -> onnx reuse:, full frame, threshold {best['setting']:g}, "
          f"one frame per micro-batch): skipped {pc['skip']:.1%}, agreement {pc['agreement']:.4f} with the onnx "
          f"stage on every frame, {pc['agreement_vs_benchmark_reference']:.4f} with the benchmark's reference "
          f"(OpenCV resize), "
          f"{pc['fps']:.0f} frames/s vs {pc['fps_every_frame']:.0f} for onnx alone "
          f"({pc['fps'] / pc['fps_every_frame']:.2f}x)")
    plot(report, args.plot)
    report["pipeline check"] = pc
    if args.json:
        args.json.write_text(json.dumps(report, default=lambda o: o if not callable(o) else None, indent=1))
    shown = args.plot.relative_to(ROOT) if args.plot.is_relative_to(ROOT) else args.plot
    print(f"\nplot: {shown}; {len(video)} frames; {time.perf_counter() - t0:.0f} s")
    return 0


def print_tables(report):
    for scene, rep in report.items():
        print(f"\n### {scene}\n")
        print("| target | policy | setting | chosen | skipped by frame_diff | by cache | together | agreement | every-Nth at same skip | frames/s (vs every frame) |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in rep["rows"]:
            fps = f"{r['fps']:.0f} ({r['fps'] / r['fps_every_frame']:.2f}x)" if "fps" in r else ""
            win = " **" if r["agreement"] > r["every_nth"] else ""
            print(f"| {r['target']:.2f} | {r['policy']} | {r['setting']:g} | {r['kind']} | {r['skip_fd']:.1%} | {r['skip_cache']:.1%} "
                  f"| {r['skip']:.1%} | {r['agreement']:.4f}{win} | {r['every_nth']:.4f} | {fps} |")


def plot(report, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    report = {k: v for k, v in report.items() if "curves" in v}
    fig, axes = plt.subplots(1, len(report), figsize=(5.5 * len(report), 4.5))
    for ax, (scene, rep) in zip(np.atleast_1d(axes), report.items()):
        s, a = zip(*rep["every_nth_curve"])
        ax.plot(s, a, "k--", label="every N-th frame")
        for name, pts in rep["curves"].items():  # noqa: B007
            pts = sorted(pts, key=lambda p: p[1]["skip"])
            ax.plot([p[1]["skip"] for p in pts], [p[1]["agreement"] for p in pts], "o-", ms=3, label=name)
        ax.set_title(f"vtest.avi, {scene}")
        ax.set_xlabel("inferences skipped")
        ax.set_ylabel("agreement with model on every frame")
        ax.set_ylim(0.8 if scene == "full frame" else 0.9, 1.001)
        target = 0.95 if scene == "full frame" else 0.99
        ax.axhline(target, color="grey", lw=0.8, ls=":")
        ax.axvline(0.5 if scene == "full frame" else 0.9, color="grey", lw=0.8, ls=":")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
