"""Skip inferences without changing answers: frame_diff in front of the onnx stage, measured so that it cannot flatter us.

Per scene (``redundancy_scenes.py``: vtest.avi, a view of it the camera model was not trained on, an
edited clip with quiet stretches, a lighting change and camera shake), the reference is the onnx stage
(examples/models/camera_counter.onnx, a people count) on every frame. For each metric (``lenient``
1 - |d|/max and ``strict`` rounded counts equal) and target, the static frame_diff setting with the most
skipping that meets the target on the **first half** of the clip is measured on the **second half**,
next to: the adaptive guard online on the second half (audits count as processed), "every N-th frame"
at exactly the same skip rate, and doing nothing (every frame). Speed: the real stages in a pipeline
(``frame_diff -> onnx`` with ``reuse:``, against ``onnx`` alone and ``frame_diff`` alone) on the second
half, in micro-batches of 1 and 16, calls interleaved (each variant on its own copy of the frames, so that none
finds a frame in the cache because another variant just read it), fastest of ``--repeats`` runs: frames/s ratio
against the target 0.85 / (1 - skip), and frame_diff's time per frame against onnx's; and the floor, onnx alone on
the batches frame_diff handed it in an untimed run (frame_diff's decisions at no cost): where the floor misses the
target, no frame_diff could meet it in this pipeline, and ``both - floor`` is what frame_diff adds where it runs.

    python benchmarks/bench_redundancy.py --video ../shared/data/video/vtest.avi     # about 3 minutes
    python benchmarks/bench_redundancy.py --frames 300 --repeats 1                     # quick look

Needs the video and opencv-python-headless (test extra) to decode it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from cache.differ import FrameDiffer  # noqa: E402
from cache.reuse import count_agreement, rounded_agreement  # noqa: E402
from pipeline import load_pipeline  # noqa: E402
from pipeline.batch import Batch  # noqa: E402
from redundancy_scenes import FPS, METRICS, decode, every_nth, scenes  # noqa: E402

TARGETS = {"lenient": (0.99, 0.95), "strict": (0.95, 0.90)}
BASE = dict(feature="pixel", pixel_threshold=15.0, confidence_power=1.0)   # sampling, downscale: the stage's defaults
# --compare-sampling: the default (stride, 16), the earlier default (sparse, 8), the candidates the default was chosen
# from (lines 16 and 12; docs/redundancy.md) and the other samplings at 8; the rule's column compares with the first
CURVE_SAMPLINGS = (("stride", 16), ("sparse", 8), ("lines", 16), ("lines", 12), ("lines", 8), ("stride", 8))
EARLIER_DEFAULT = "sparse, downscale 8"
GRID = [dict(threshold=t, refresh_seconds=r) for r in (None, 2.0)
        for t in (0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3)]
GUARD = dict(audit_rate=0.05, audit_boost=4.0, guard_min_audits=5, guard_window=100)
AGREE = {"lenient": count_agreement, "strict": rounded_agreement}
REUSE = {"lenient": "count", "strict": "rounded"}


def pipeline(model: Path, diff: dict | None, onnx: bool = True, metric: str = "lenient"):
    stages, src = [], "cams"
    if diff is not None:
        stages.append({"id": "diff", "type": "frame_diff", "inputs": [src], **{k: v for k, v in diff.items() if v is not None}})
        src = "diff"
    if onnx:
        stages.append({"id": "count", "type": "onnx", "inputs": [src], "model": str(model),
                       "feeds": {"frame": {"source": "frame"}}, "outputs": {"count": {"decode": "regression", "field": "people"}},
                       "reuse": {"agreement": REUSE[metric], "confidence": "rounding"}})
        src = "count"
    spec = {"pipeline": "bench-redundancy", "sources": [{"id": "cams", "type": "replay", "path": "x"}],
            "stages": stages, "sinks": [{"id": "out", "type": "stdout", "inputs": [src]}]}
    return load_pipeline(json.dumps(spec) + "\n")


def records(frames, t0: int = 0) -> list[dict]:
    return [{"ts": (t0 + i) / FPS, "tags": {"device": "cam"}, "frame": f} for i, f in enumerate(frames)]


def batches(frames, batch: int, t0: int) -> list[Batch]:
    """Micro-batches of ``batch`` records over a fresh copy of ``frames`` (a copy no other variant has read)."""
    recs = records(np.array(frames), t0)
    return [Batch.from_records(recs[i:i + batch]) for i in range(0, len(recs), batch)]


def reference(model: Path, frames) -> np.ndarray:
    """The onnx stage on every frame: the answers every policy is compared with."""
    out = pipeline(model, None).run_records(records(frames), batch_size=32)["out"]
    return np.array([r["fields"]["people"] for r in out])


def simulate(frames, ref, setting: dict, metric: str = "lenient") -> dict:
    """frame_diff's decisions on ``frames`` (the reference counts stand in for the model: it is deterministic),
    one frame per call as a camera delivers them; audits feed the guard with the metric's agreement."""
    kw = dict(BASE, **setting)
    guard = {k: kw.pop(k) for k in ("guard_min_audits", "guard_window") if k in kw}
    boost = kw.pop("audit_boost", 1.0)
    fd = FrameDiffer(**{k: v for k, v in kw.items()}, seed=1,
                     guard={"min_audits": guard.get("guard_min_audits", 10), "window": guard.get("guard_window", 200),
                            "boost": boost})
    used = np.empty(len(ref))
    since = np.zeros(len(ref), np.int64)       # frames since the last processed one (0: processed)
    last, n_model = None, 0
    for i in range(len(frames)):
        d = fd.decide(["cam"], [i / FPS], [frames[i]])
        if d.process[0]:
            n_model += 1
            if d.reason[0] == "audit" and last is not None:
                fd.observe("cam", AGREE[metric](last, ref[i]))
            fd.observe_confidence("cam", 1 - 2 * abs(ref[i] - round(ref[i])))
            last = ref[i]
        else:
            since[i] = since[i - 1] + 1 if i else 1
        used[i] = last
    st = fd.stats()["cam"]
    return {"skip": 1 - n_model / len(ref), **{m: fn(used, ref) for m, fn in METRICS.items()},
            "audits": st["audits"], "tightened": st["tightened"], "threshold": st["threshold"],
            "by_staleness": by_staleness(used, ref, since, metric)}


STALENESS = ((1, 3), (4, 9), (10, None))       # frames since the last processed frame


def by_staleness(used, ref, since, metric: str) -> dict:
    """Reused frames and their mean agreement (the metric per frame) by how many frames they are from the last
    processed frame: where the errors of a setting are."""
    agree = np.array([AGREE[metric](u, r) if np.isfinite(u) else 0.0 for u, r in zip(used, ref)])
    out = {}
    for lo, hi in STALENESS:
        m = (since >= lo) & (since <= (hi if hi is not None else len(since)))
        out[f"{lo}-{hi}" if hi else f"{lo}+"] = (int(m.sum()), float(agree[m].mean()) if m.any() else None)
    return out


def guard_online(frames, ref, start: dict, metric: str, target: float) -> dict:
    """:func:`simulate` with the adaptive guard (``GUARD``) from the static setting ``start``, aiming at ``target``."""
    return simulate(frames, ref, dict(start, adaptive=True, target=target, **GUARD), metric)


def choose(frames, ref, metric: str, target: float) -> dict | None:
    """The grid setting with the most skipping whose ``metric`` meets ``target`` on these frames."""
    ok = [(r["skip"], s) for s in GRID if (r := simulate(frames, ref, dict(s, audit_rate=0.0)))[metric] >= target]
    return max(ok, key=lambda x: (x[0], x[1]["threshold"]))[1] if ok else None


def marked(model: Path, frames, diff: dict, batch: int, t0: int) -> list[Batch]:
    """The batches frame_diff hands to onnx in ``frame_diff -> onnx`` (frames marked ``reused``, with the onnx stage's
    confidences fed back as in the timed run), made once, untimed, on their own copy of the frames."""
    p = pipeline(model, diff)
    got: list[Batch] = []
    stage = p.graph.stages["count"]
    process = stage.process

    def keep(b: Batch) -> Batch:
        got.append(b)
        return process(b)

    stage.process = keep
    p.graph.deliver = lambda sink, b: None
    for b in batches(frames, batch, t0):
        p.graph.push("cams", b)
    p.graph.flush()
    return got


def speed(model: Path, frames, setting: dict, batch: int, repeats: int, t0: int) -> dict:
    """Frames/s of onnx alone, frame_diff alone, frame_diff -> onnx, and onnx on frames frame_diff marked beforehand
    (untimed): the last is the floor of any frame_diff in this pipeline (its decisions at no cost), so the target is out
    of reach of frame_diff's own cost wherever the floor misses it; frame_diff -> onnx minus the floor is what the
    stage adds in the pipeline, compared with the inference it avoids."""
    diff = dict(BASE, **setting, audit_rate=0.0)
    variants = {"onnx": (None, True), "frame_diff": (diff, False), "frame_diff+onnx": (diff, True),
                "floor": (None, True)}
    # each variant reads its own copy of the frames: none finds them in the cache because another has just read them
    given = {name: batches(frames, batch, t0) for name in variants if name != "floor"}
    given["floor"] = marked(model, frames, diff, batch, t0)
    assert len(given["floor"]) == len(given["onnx"])
    times = {k: [] for k in variants}
    skip = None
    for _ in range(repeats):          # the variants run in lockstep, batch by batch: load that comes and goes hits all alike
        pipes = {name: pipeline(model, d, with_onnx) for name, (d, with_onnx) in variants.items()}
        spent = dict.fromkeys(variants, 0.0)
        for p in pipes.values():
            p.graph.deliver = lambda sink, b: None
        for j in range(len(given["onnx"])):
            for name, p in pipes.items():
                b = given[name][j]
                start = time.perf_counter()
                p.graph.push("cams", b)
                spent[name] += time.perf_counter() - start
        for name, p in pipes.items():
            start = time.perf_counter()
            p.graph.flush()
            times[name].append(spent[name] + time.perf_counter() - start)
        skip = pipes["frame_diff+onnx"].metrics.get("diff", "reused") / len(frames)
    t = {k: min(v) / len(frames) for k, v in times.items()}
    return {"batch": batch, "skip": skip, "us_onnx": t["onnx"] * 1e6, "us_diff": t["frame_diff"] * 1e6,
            "us_both": t["frame_diff+onnx"] * 1e6, "us_floor": t["floor"] * 1e6, "speedup": t["onnx"] / t["frame_diff+onnx"],
            "floor_speedup": t["onnx"] / t["floor"], "needed": 0.85 / max(1 - skip, 1e-9),
            "diff_share": t["frame_diff"] / t["onnx"],
            "added_share": (t["frame_diff+onnx"] - t["floor"]) / max(skip * t["onnx"], 1e-12)}


def pipeline_check(model: Path, frames, ref, setting: dict, t0: int) -> dict:
    """The real stages give what the harness says (skip, both metrics)."""
    p = pipeline(model, dict(BASE, **setting, audit_rate=0.0))
    out = p.run_records(records(frames, t0), batch_size=16)["out"]
    used = np.array([r["fields"]["people"] for r in out])
    return {"skip": p.metrics.get("diff", "reused") / len(frames), **{m: fn(used, ref) for m, fn in METRICS.items()}}


def evaluate(name, frames, model: Path, repeats: int, compare_sampling: bool = False) -> dict:
    ref = reference(model, frames)
    half = len(frames) // 2
    first, second, ref1, ref2 = frames[:half], frames[half:], ref[:half], ref[half:]
    rows = [{"policy": "every frame (do nothing)", "skip": 0.0, "lenient": 1.0, "strict": 1.0, "setting": "-"}]
    speeds = []
    for metric, targets in TARGETS.items():
        for target in targets:
            s = choose(first, ref1, metric, target)
            setting = s or dict(GRID[0])
            r = simulate(second, ref2, dict(setting, audit_rate=0.0), metric)
            rows.append({**r, "policy": "frame_diff, chosen on 1st half", "metric": metric, "target": target,
                         "setting": _show(setting) + ("" if s else " (none met it: tightest)"),
                         "every_nth": every_nth(ref2, r["skip"])})
            a = guard_online(second, ref2, setting, metric, target)
            rows.append({**a, "policy": "frame_diff + guard (online)", "metric": metric, "target": target,
                         "setting": f"start {setting['threshold']:g}, {a['audits']} audits, {a['tightened']} tightened",
                         "every_nth": every_nth(ref2, a["skip"])})
            if (metric, target) in (("lenient", 0.95), ("strict", 0.90)):
                check = pipeline_check(model, second, ref2, setting, half)
                rows[-2]["pipeline"] = check
                for batch in (1, 16):
                    speeds.append({"metric": metric, "target": target, "setting": _show(setting),
                                   **speed(model, second, setting, batch, repeats, half)})
    curves = sampling_curves(second, ref2) if compare_sampling else None
    return {"scene": name, "frames": len(frames), "rows": rows, "speed": speeds, "curves": curves,
            "count_changes": float((np.diff(np.round(ref)) != 0).mean()), "mean_count": float(ref.mean())}


CURVE_THRESHOLDS = (0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.06, 0.08, 0.12, 0.15, 0.2, 0.3)
CURVE_SKIPS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def sampling_curves(frames, ref) -> dict:
    """Quality at equal skip on these frames (the held-out half) for each ``sampling``: static settings over
    CURVE_THRESHOLDS, each metric interpolated at CURVE_SKIPS (None outside the range the settings reach),
    with every-Nth at the same skips. Nothing is chosen on these frames: it is a curve, not a tuning."""
    out = {}
    for sampling, downscale in CURVE_SAMPLINGS:
        res = [simulate(frames, ref, dict(threshold=t, audit_rate=0.0, sampling=sampling, downscale=downscale))
               for t in CURVE_THRESHOLDS]
        skip = np.array([r["skip"] for r in res])
        order = np.argsort(skip, kind="stable")
        out[f"{sampling}, downscale {downscale}"] = {m: [None if np.isnan(v) else float(v) for v in
                             np.interp(CURVE_SKIPS, skip[order], np.array([r[m] for r in res])[order], left=np.nan, right=np.nan)]
                         for m in METRICS}
    out["every N-th"] = {m: [every_nth(ref, s)[m] for s in CURVE_SKIPS] for m in METRICS}
    return out


def _show(s: dict) -> str:
    return f"threshold {s['threshold']:g}" + (f", refresh {s['refresh_seconds']:g}s" if s.get("refresh_seconds") else "")


def print_report(rep: dict) -> None:
    print(f"\n### {rep['scene']} ({rep['frames']} frames; the model's rounded count changes on "
          f"{rep['count_changes']:.1%} of consecutive frames, mean count {rep['mean_count']:.2f})\n")
    print("| metric, target | policy (measured on the 2nd half) | setting | skipped | lenient | strict "
          "| every-Nth at same skip: lenient | strict |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rep["rows"]:
        mt = f"{r['metric']} {r['target']:.2f}" if "metric" in r else "-"
        en = r.get("every_nth")
        win = "**" if en and r[r["metric"]] > en[r["metric"]] else ""
        ok = "" if "metric" not in r else (" ✓" if r[r["metric"]] >= r["target"] else " ✗")
        l_, s_ = (f"{r['lenient']:.4f}", f"{r['strict']:.4f}")
        if "metric" in r:
            l_, s_ = [(f"{win}{v}{win}{ok}" if m == r["metric"] else v) for m, v in (("lenient", l_), ("strict", s_))]
        print(f"| {mt} | {r['policy']} | {r['setting']} | {r['skip']:.1%} | {l_} | {s_} | "
              f"{en['lenient']:.4f} | {en['strict']:.4f} |" if en else
              f"| {mt} | {r['policy']} | {r['setting']} | {r['skip']:.1%} | {l_} | {s_} | - | - |")
    print("\n| chosen for | setting | batch | skipped | onnx alone µs/frame | frame_diff µs/frame (share of onnx) "
          "| frame_diff -> onnx µs/frame | speed-up | target 0.85/(1-skip) | floor: skips given µs/frame (speed-up) "
          "| frame_diff in the pipeline: (both - floor) / inference avoided |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for s in rep["speed"]:
        print(f"| {s['metric']} {s['target']:.2f} | {s['setting']} | {s['batch']} | {s['skip']:.1%} | {s['us_onnx']:.0f} | "
              f"{s['us_diff']:.0f} ({s['diff_share']:.1%}) | {s['us_both']:.0f} | {s['speedup']:.2f}x | "
              f"{s['needed']:.2f}x {'✓' if s['speedup'] >= s['needed'] else '✗'} | "
              f"{s['us_floor']:.0f} ({s['floor_speedup']:.2f}x {'✓' if s['floor_speedup'] >= s['needed'] else '✗'}) | "
              f"{s['added_share']:.1%} |")
    if rep.get("curves"):
        print("\nQuality at equal skip on the 2nd half (static thresholds, interpolated), by `sampling`:\n")
        print("| sampling | metric | " + " | ".join(f"{s:.0%} skipped" for s in CURVE_SKIPS)
              + f" | mean - {EARLIER_DEFAULT} (columns defined for both) |")
        print("|---|---|" + "---|" * (len(CURVE_SKIPS) + 1))
        base = rep["curves"][EARLIER_DEFAULT]
        for sampling, by_metric in rep["curves"].items():
            for m, values in by_metric.items():
                both = [v - b for v, b in zip(values, base[m]) if v is not None and b is not None]
                rule = f"{np.mean(both):+.4f}" if both else "-"
                print(f"| {sampling} | {m} | " + " | ".join("-" if v is None else f"{v:.4f}" for v in values)
                      + f" | {rule} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--video", type=Path, default=ROOT.parent / "shared/data/video/vtest.avi")
    ap.add_argument("--model", type=Path, default=ROOT / "examples/models/camera_counter.onnx")
    ap.add_argument("--frames", type=int, default=None, help="only the first N frames of the video")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per variant (fastest counts)")
    ap.add_argument("--scenes", nargs="*", default=None, help="only these scenes (vtest, 'right view', edited)")
    ap.add_argument("--sampling", choices=["stride", "sparse", "lines", "area"], default=None,
                    help="frame_diff's sampling (default: the stage's default)")
    ap.add_argument("--downscale", type=int, default=None, help="frame_diff's downscale (default: the stage's default)")
    ap.add_argument("--compare-sampling", action="store_true",
                    help="also print quality at equal skip on the 2nd half for each of CURVE_SAMPLINGS")
    ap.add_argument("--json", type=Path, default=None, help="also write all figures here")
    args = ap.parse_args(argv)
    if not args.video.exists():
        print(f"skipped: {args.video} is missing (give --video; the shared data folder is not beside the checkout)")
        return 0
    if args.sampling:
        BASE["sampling"] = args.sampling
    if args.downscale:
        BASE["downscale"] = args.downscale
    started = time.perf_counter()
    video = decode(args.video, args.frames)
    reports = []
    for name, frames in scenes(video):
        if args.scenes and name not in args.scenes:
            continue
        rep = evaluate(name, frames, args.model, args.repeats, args.compare_sampling)
        print_report(rep)
        reports.append(rep)
        del frames
    print(f"\n{len(video)} video frames, {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(reports, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
