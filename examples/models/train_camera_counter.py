"""Train the example camera model: people count + occupancy grid for a static camera.

Knowledge distillation with a teacher that needs no downloads:

* teacher: the median of the video is the empty background; per frame, the
  blurred absolute difference to it is thresholded, cleaned (open + dilate) and
  the connected blobs at least person-sized are counted.  The foreground mask is
  also pooled into a 6x8 occupancy grid (fraction of each cell that is
  foreground).
* student: a ~20k-parameter CNN on a 1x96x128 grayscale frame (scaled to 0..1)
  that predicts both (plus a density map used only in training), trained with torch on one CPU core in about a minute.

Every fifth 4-second block of the video (20% of the frames, spread over the
whole video) is held out and evaluates the student against the teacher.  The script
exports ``camera_counter.onnx`` (dynamic batch axis), writes its sha256 and a
JSON report of the evaluation next to it.

Usage (from the repository root)::

    python examples/models/train_camera_counter.py [--video ../shared/data/video/vtest.avi]

Development dependencies only: ``opencv-python-headless`` (decode + teacher),
``torch`` (training, export).  The runtime needs just onnxruntime + numpy.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
H, W = 96, 128                # student input size (rows, cols)
GRID = (6, 8)                 # occupancy grid (rows, cols)
MIN_AREA, MIN_HEIGHT = 600, 30  # teacher's person-sized blob, in full-resolution pixels


def read_gray(video: Path) -> np.ndarray:
    import cv2

    cap = cv2.VideoCapture(str(video))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
    if not frames:
        raise SystemExit(f"could not decode any frame from {video}")
    return np.stack(frames)


def teacher(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """People count (n,), occupancy grid (n, 6, 8) and density map (n, 12, 16) by background subtraction.

    The density map holds each person-sized blob at the cell of its centroid (so it sums to the
    count); it gives the student spatial supervision, as in crowd-counting density regression."""
    import cv2

    bg = cv2.GaussianBlur(np.median(frames[::3], axis=0).astype(np.uint8), (5, 5), 0)
    opener = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    grower = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 15))
    counts, grids, density = [], [], []
    gh, gw = frames.shape[1] // GRID[0], frames.shape[2] // GRID[1]
    for gray in frames:
        diff = cv2.absdiff(cv2.GaussianBlur(gray, (5, 5), 0), bg)
        mask = (diff > 30).astype(np.uint8) * 255
        mask = cv2.dilate(cv2.morphologyEx(mask, cv2.MORPH_OPEN, opener), grower)
        _, _, stats, centroids = cv2.connectedComponentsWithStats(mask)
        area, height = stats[1:, cv2.CC_STAT_AREA], stats[1:, cv2.CC_STAT_HEIGHT]
        person = (area >= MIN_AREA) & (height >= MIN_HEIGHT)
        counts.append(int(person.sum()))
        dmap = np.zeros((H // 8, W // 8), np.float32)
        for cx, cy in centroids[1:][person]:
            dmap[min(int(cy * dmap.shape[0] / gray.shape[0]), dmap.shape[0] - 1),
                 min(int(cx * dmap.shape[1] / gray.shape[1]), dmap.shape[1] - 1)] += 1
        density.append(dmap)
        cells = (mask[: gh * GRID[0], : gw * GRID[1]] > 0).reshape(GRID[0], gh, GRID[1], gw)
        grids.append(cells.mean(axis=(1, 3)))
    return np.asarray(counts, np.float32), np.asarray(grids, np.float32), np.asarray(density, np.float32)


def preprocess(frames: np.ndarray) -> np.ndarray:
    """uint8 (n, rows, cols) gray -> float32 (n, 1, 96, 128) in 0..1 (INTER_AREA resize)."""
    import cv2

    small = np.stack([cv2.resize(f, (W, H), interpolation=cv2.INTER_AREA) for f in frames])
    return (small.astype(np.float32) / 255.0)[:, None]


def build_student():
    import torch
    from torch import nn

    class Student(nn.Module):
        def __init__(self):
            super().__init__()

            def block(cin, cout):
                return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout),
                                     nn.ReLU(), nn.MaxPool2d(2))

            self.features = nn.Sequential(block(1, 8), block(8, 16), block(16, 32))  # -> 32x12x16
            self.grid = nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(32, 1, 1))  # -> 1x6x8
            self.count = nn.Sequential(nn.Conv2d(32, 16, 1), nn.ReLU(), nn.Conv2d(16, 1, 1))

        def forward(self, frame):
            count, occupancy, _ = self.heads(frame)
            return count, occupancy

        def heads(self, frame):
            f = self.features(frame)
            occupancy = torch.sigmoid(self.grid(f))[:, 0]
            density = torch.relu(self.count(f))[:, 0]       # people per 8x8-pixel cell of the input
            return density.sum(dim=(1, 2))[:, None], occupancy, density

    return Student()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", type=Path, default=HERE.parents[1] / ".." / "shared/data/video/vtest.avi")
    ap.add_argument("--out", type=Path, default=HERE / "camera_counter.onnx")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import torch

    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    frames = read_gray(args.video)
    counts, grids, density = teacher(frames)
    x = preprocess(frames)
    # every fifth block of 40 frames (4 s) is held out: unseen stretches spread over the whole video
    held_mask = (np.arange(len(x)) // 40) % 5 == 4
    order_idx = np.concatenate([np.flatnonzero(~held_mask), np.flatnonzero(held_mask)])
    x, counts, grids, density = x[order_idx], counts[order_idx], grids[order_idx], density[order_idx]
    n_train = int((~held_mask).sum())
    print(f"{len(x)} frames, teacher counts {counts.min():.0f}..{counts.max():.0f} "
          f"(mean {counts.mean():.2f}), {time.time() - t0:.1f}s")

    model = build_student()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=args.epochs * ((n_train + 31) // 32))
    xt, ct, gt = torch.from_numpy(x[:n_train]), torch.from_numpy(counts[:n_train]), torch.from_numpy(grids[:n_train])
    # blur the centroid map (sum-preserving) so a blob one cell off is only a small error
    blur = torch.tensor([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=torch.float32).div(16).view(1, 1, 3, 3)
    dt = torch.nn.functional.conv2d(torch.from_numpy(density[:n_train])[:, None], blur, padding=1)[:, 0]
    for epoch in range(args.epochs):
        model.train()
        order = torch.from_numpy(rng.permutation(n_train))
        total = 0.0
        for i in range(0, n_train, 32):
            idx = order[i:i + 32]
            xb, cb, gb, db = xt[idx], ct[idx], gt[idx], dt[idx]
            if rng.random() < 0.5:                     # mirror: same count, mirrored maps
                xb, gb, db = xb.flip(-1), gb.flip(-1), db.flip(-1)
            xb = xb * float(rng.uniform(0.85, 1.15)) + float(rng.uniform(-0.05, 0.05))  # exposure jitter
            pc, pg, pd = model.heads(xb)
            loss = (torch.nn.functional.smooth_l1_loss(pc[:, 0], cb) + 10 * torch.nn.functional.mse_loss(pg, gb)
                    + 100 * torch.nn.functional.mse_loss(pd, db))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        if epoch % 10 == 0 or epoch == args.epochs - 1:
            print(f"epoch {epoch:3d} loss {total / n_train:.4f} {time.time() - t0:.0f}s")

    model.eval()
    with torch.no_grad():
        pc, pg = model(torch.from_numpy(x))
    pc, pg = pc[:, 0].numpy(), pg.numpy()
    held = slice(n_train, None)
    report = {
        "frames": int(len(x)), "train_frames": n_train, "heldout_frames": int(len(x) - n_train),
        "teacher": "median background, |diff|>30, open 5x5, dilate 9x15, blobs area>=600 & height>=30",
        "heldout_count_mae": round(float(np.abs(pc[held] - counts[held]).mean()), 3),
        "heldout_count_exact_after_rounding": round(float((np.rint(pc[held]) == counts[held]).mean()), 3),
        "heldout_baseline_mae_predict_train_mean": round(float(np.abs(counts[:n_train].mean() - counts[held]).mean()), 3),
        "heldout_grid_mae": round(float(np.abs(pg[held] - grids[held]).mean()), 4),
        "train_count_mae": round(float(np.abs(pc[:n_train] - counts[:n_train]).mean()), 3),
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "train_seconds": round(time.time() - t0, 1),
    }

    torch.onnx.export(model, (torch.from_numpy(x[:1]),), str(args.out), dynamo=False,
                      input_names=["frame"], output_names=["count", "occupancy"],
                      dynamic_axes={"frame": {0: "batch"}, "count": {0: "batch"}, "occupancy": {0: "batch"}},
                      opset_version=17)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(args.out), providers=["CPUExecutionProvider"])
    oc, og = sess.run(None, {"frame": x[:64]})
    report["onnx_max_abs_diff_vs_torch"] = float(max(np.abs(oc[:, 0] - pc[:64]).max(), np.abs(og - pg[:64]).max()))
    report["onnx_bytes"] = args.out.stat().st_size
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    args.out.with_name(args.out.name + ".sha256").write_text(f"{digest}  {args.out.name}\n")
    args.out.with_name(args.out.stem + ".report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"wrote {args.out} sha256 {digest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
