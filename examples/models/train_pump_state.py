"""Train the example sensor-window model: pump state from a window of SKAB readings.

Data: the Skoltech Anomaly Benchmark (``../shared/data/skab``), 1 Hz readings of
8 sensors on a water-circulation test bed.  A window is the last ``WINDOW`` (60)
readings of the 8 sensors; its class is the state at the window's last reading:

* ``normal``               - not in an anomalous regime (all of ``anomaly-free/``
                             and the normal parts of every experiment);
* ``inlet_valve_closed``   - anomalous regime of a ``valve1/`` experiment;
* ``outlet_valve_closed``  - anomalous regime of a ``valve2/`` experiment;
* ``other_fault``          - anomalous regime of an ``other/`` experiment (leaks,
                             rotor imbalance, cavitation, hot water, level changes).

The model takes the raw window ``[batch, 60, 8]`` float32 (sensor order in
``SENSORS``) and computes its own features in the graph (per sensor: mean, std,
last - first, last - mean; standardised with the training statistics), then a
small MLP gives class probabilities ``[batch, 4]`` (softmax, order of
``pump_state.labels``).  Every fourth experiment file is held out for evaluation
(whole files, so nothing of a test experiment is seen in training).

Usage (from the repository root)::

    python examples/models/train_pump_state.py [--skab ../shared/data/skab]

Development dependency only: ``torch``.  Writes ``pump_state.onnx``, its sha256,
``pump_state.labels`` and ``pump_state.report.json``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WINDOW = 60
SENSORS = ["Accelerometer1RMS", "Accelerometer2RMS", "Current", "Pressure", "Temperature",
           "Thermocouple", "Voltage", "Volume Flow RateRMS"]
LABELS = ["normal", "inlet_valve_closed", "outlet_valve_closed", "other_fault"]
GROUP_CLASS = {"valve1": 1, "valve2": 2, "other": 3}


def experiment_files(skab: Path) -> list[tuple[Path, int]]:
    files = [(skab / "anomaly-free" / "anomaly-free.csv", 0)]
    for group, cls in GROUP_CLASS.items():
        files += [(f, cls) for f in sorted((skab / group).glob("*.csv"), key=lambda p: int(p.stem))]
    return files


def windows(path: Path, cls: int) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    df = pd.read_csv(path, sep=";")
    x = df[SENSORS].to_numpy(np.float32)
    anomalous = df["anomaly"].to_numpy() > 0 if "anomaly" in df else np.zeros(len(df), bool)
    idx = np.arange(WINDOW, len(df) + 1)
    win = np.lib.stride_tricks.sliding_window_view(x, WINDOW, axis=0).transpose(0, 2, 1)  # (n-W+1, W, F)
    y = np.where(anomalous[idx - 1], cls, 0)
    return np.ascontiguousarray(win), y.astype(np.int64)


def build_model(mean, std):
    import torch
    from torch import nn

    class PumpState(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("mu", torch.as_tensor(mean))
            self.register_buffer("sigma", torch.as_tensor(std))
            self.mlp = nn.Sequential(nn.Linear(4 * len(SENSORS), 64), nn.ReLU(), nn.Dropout(0.1),
                                     nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, len(LABELS)))

        def features(self, window):
            m = window.mean(dim=1)
            s = ((window - m[:, None]) ** 2).mean(dim=1).sqrt()
            last = window[:, -1]
            f = torch.cat([m, s, last - window[:, 0], last - m], dim=1)
            return (f - self.mu) / self.sigma

        def forward(self, window):
            return torch.softmax(self.mlp(self.features(window)), dim=1)

        def logits(self, window):
            return self.mlp(self.features(window))

    return PumpState()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skab", type=Path, default=HERE.parents[1] / ".." / "shared/data/skab")
    ap.add_argument("--out", type=Path, default=HERE / "pump_state.onnx")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import torch

    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    files = experiment_files(args.skab)
    if len(files) < 2 or not files[0][0].exists():
        raise SystemExit(f"SKAB data not found under {args.skab}")
    train, test = [], []
    for i, (path, cls) in enumerate(files):
        (test if i % 4 == 3 else train).append(windows(path, cls))
    xtr, ytr = np.concatenate([w for w, _ in train]), np.concatenate([y for _, y in train])
    xte, yte = np.concatenate([w for w, _ in test]), np.concatenate([y for _, y in test])
    print(f"{len(xtr)} train / {len(xte)} test windows, class counts {np.bincount(ytr, minlength=4)}")

    model = build_model(np.zeros(32, np.float32), np.ones(32, np.float32))
    with torch.no_grad():
        f = model.features(torch.from_numpy(xtr))
    model.mu.copy_(f.mean(0))
    model.sigma.copy_(f.std(0).clamp_min(1e-6))
    weight = torch.as_tensor(len(ytr) / (4 * np.bincount(ytr, minlength=4).clip(1)), dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-3)
    xt, yt = torch.from_numpy(xtr), torch.from_numpy(ytr)
    for epoch in range(args.epochs):
        model.train()
        order = torch.from_numpy(rng.permutation(len(xt)))
        total = 0.0
        for i in range(0, len(xt), 256):
            idx = order[i:i + 256]
            loss = torch.nn.functional.cross_entropy(model.logits(xt[idx]), yt[idx], weight=weight ** 0.5)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        print(f"epoch {epoch:3d} loss {total / len(xt):.4f} {time.time() - t0:.0f}s")

    model.eval()
    with torch.no_grad():
        pte = model(torch.from_numpy(xte)).numpy()
    pred = pte.argmax(1)
    conf = np.zeros((4, 4), int)
    np.add.at(conf, (yte, pred), 1)
    true_anom, pred_anom = yte > 0, pred > 0
    tp = int((true_anom & pred_anom).sum())
    report = {
        "window": WINDOW, "sensors": SENSORS, "labels": LABELS,
        "train_windows": int(len(xtr)), "test_windows": int(len(xte)),
        "test_files": [str(p.relative_to(args.skab)) for i, (p, _) in enumerate(files) if i % 4 == 3],
        "test_accuracy": round(float((pred == yte).mean()), 4),
        "test_majority_baseline_accuracy": round(float((yte == 0).mean()), 4),
        "test_anomaly_f1": round(2 * tp / max(1, int(true_anom.sum() + pred_anom.sum())), 4),
        "test_far_pct": round(100 * float((pred_anom & ~true_anom).sum() / max(1, (~true_anom).sum())), 2),
        "test_mar_pct": round(100 * float((~pred_anom & true_anom).sum() / max(1, true_anom.sum())), 2),
        "test_confusion_rows_true_cols_pred": conf.tolist(),
        "train_seconds": round(time.time() - t0, 1),
    }
    torch.onnx.export(model, (torch.from_numpy(xte[:1]),), str(args.out), dynamo=False,
                      input_names=["window"], output_names=["probabilities"],
                      dynamic_axes={"window": {0: "batch"}, "probabilities": {0: "batch"}}, opset_version=17)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(args.out), providers=["CPUExecutionProvider"])
    report["onnx_max_abs_diff_vs_torch"] = float(np.abs(sess.run(None, {"window": xte[:256]})[0] - pte[:256]).max())
    report["onnx_bytes"] = args.out.stat().st_size
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    args.out.with_name(args.out.name + ".sha256").write_text(f"{digest}  {args.out.name}\n")
    args.out.with_name(args.out.stem + ".labels").write_text("\n".join(LABELS) + "\n")
    args.out.with_name(args.out.stem + ".report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"wrote {args.out} sha256 {digest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
