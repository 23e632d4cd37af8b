"""Tiny ONNX models built with onnx.helper for tests and benchmarks (no training, no downloads)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "examples" / "models"
SHARED = REPO.parent / "shared" / "data"


def _save(model, path: Path, sidecar: bool = False) -> Path:
    model.opset_import[0].version = 17
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    if sidecar:
        write_sidecar(path)
    return path


def write_sidecar(path: Path) -> str:
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    Path(str(path) + ".sha256").write_text(f"{digest}  {Path(path).name}\n")
    return digest


def sum_plus(path: Path, features: int = 3, bias: float = 0.0, batch: int | str = "batch", sidecar: bool = False) -> Path:
    """``x [batch, features] float32 -> y [batch, 1] = sum(x) + bias``."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, features])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 1])
    nodes = [
        helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=1),
        helper.make_node("Add", ["s", "b"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.array([1], np.int64), "axes"),
             numpy_helper.from_array(np.array([bias], np.float32), "b")]
    graph = helper.make_graph(nodes, f"sum_plus_{bias}", [x], [y], inits)
    return _save(helper.make_model(graph), path, sidecar)


def classifier(path: Path, features: int = 3, classes: int = 3, seed: int = 0, sidecar: bool = False) -> Path:
    """``x [batch, features] -> probs [batch, classes]`` = softmax(x @ W)."""
    w = np.random.default_rng(seed).normal(size=(features, classes)).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])
    p = helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", classes])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["z"]), helper.make_node("Softmax", ["z"], ["probs"], axis=1)]
    graph = helper.make_graph(nodes, "classifier", [x], [p], [numpy_helper.from_array(w, "w")])
    return _save(helper.make_model(graph), path, sidecar)


def cnn(path: Path, channels: int = 3, size: int = 224, width: int = 32, classes: int = 1000, seed: int = 0) -> Path:
    """A standard-sized image classifier (conv stem + 4 stride-2 conv blocks + GAP + FC), random weights.

    ``image [batch, channels, size, size] -> logits [batch, classes]``; about the compute of a small
    mobile CNN, for benchmarks."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []
    cin, cur = channels, "image"
    for i, cout in enumerate([width, width * 2, width * 4, width * 8, width * 8]):
        w = (rng.normal(size=(cout, cin, 3, 3)) * np.sqrt(2 / (cin * 9))).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(cout, np.float32), f"b{i}")]
        nodes += [helper.make_node("Conv", [cur, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1], strides=[2, 2]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        cin, cur = cout, f"r{i}"
    fc = (rng.normal(size=(cin, classes)) / np.sqrt(cin)).astype(np.float32)
    inits += [numpy_helper.from_array(fc, "fc")]
    nodes += [helper.make_node("GlobalAveragePool", [cur], ["gap"]),
              helper.make_node("Flatten", ["gap"], ["flat"]),
              helper.make_node("MatMul", ["flat", "fc"], ["logits"])]
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", channels, size, size])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])
    return _save(helper.make_model(helper.make_graph(nodes, "cnn", [x], [y], inits)), path)
