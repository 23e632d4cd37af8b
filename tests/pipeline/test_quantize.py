"""``edgesieve quantize``: static and dynamic round trips, the report, and errors for people."""

import json

import numpy as np
import onnxruntime as ort

from pipeline.quantize import main
from tests.support.onnx_models import MODELS, classifier


def test_static_round_trip_on_the_camera_model(tmp_path, capsys):
    rng = np.random.default_rng(0)
    cal = tmp_path / "frames.npy"
    np.save(cal, rng.random((16, 1, 96, 128), dtype=np.float32))
    out, report = tmp_path / "cam.int8.onnx", tmp_path / "r.json"
    assert main([str(MODELS / "camera_counter.onnx"), str(out), "--calibration", str(cal), "--seconds", "0.05",
                 "--report", str(report)]) == 0
    r = json.loads(report.read_text())
    assert r["mode"] == "static" and r["records"] == 16 and set(r["outputs"]) == {"count", "occupancy"}
    assert r["size_bytes"][1] < r["size_bytes"][0]
    assert r["outputs"]["occupancy"]["max_abs_diff"] < 0.1          # int8 stays close on a 0..1 output
    assert (tmp_path / "cam.int8.onnx.sha256").read_text().split()[0] == r["sha256"]
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"frame": np.zeros((2, 1, 96, 128), np.float32)})[0].shape == (2, 1)
    assert "records/s" in capsys.readouterr().out


def test_dynamic_round_trip_reports_top1_agreement(tmp_path, capsys):
    model = classifier(tmp_path / "c.onnx", features=16, classes=5)
    cal = tmp_path / "x.npz"
    np.savez(cal, x=np.random.default_rng(1).normal(size=(64, 16)).astype(np.float32))
    assert main([str(model), str(tmp_path / "q.onnx"), "--calibration", str(cal), "--mode", "dynamic", "--seconds", "0.05"]) == 0
    text = capsys.readouterr().out
    assert "mode dynamic" in text and "top-1 agreement" in text


def test_errors_exit_1_with_a_reason(tmp_path, capsys):
    model = classifier(tmp_path / "c.onnx", features=4)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, y=np.zeros((3, 4), np.float32))
    assert main([str(model), str(tmp_path / "q.onnx"), "--calibration", str(wrong)]) == 1
    assert "no array for model input(s) x" in capsys.readouterr().err
    shape = tmp_path / "shape.npy"
    np.save(shape, np.zeros((3, 5), np.float32))
    assert main([str(model), str(tmp_path / "q.onnx"), "--calibration", str(shape)]) == 1
    assert "has shape (3, 5), the model expects" in capsys.readouterr().err
    (tmp_path / "bad.onnx").write_bytes(b"nope")
    assert main([str(tmp_path / "bad.onnx"), str(tmp_path / "q.onnx")]) == 1
    assert "onnxruntime cannot load it" in capsys.readouterr().err
    assert main([str(model), str(tmp_path / "q.onnx"), "--mode", "static"]) == 1
    assert "needs --calibration" in capsys.readouterr().err
