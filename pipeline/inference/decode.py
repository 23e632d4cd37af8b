"""Decode model output tensors into record columns, vectorised over the batch.

Each decoder takes the output array ``(n, ...)`` and returns three dicts of
columns (``fields``, ``tags``, ``extra``), each column an array of length ``n``.

>>> import numpy as np
>>> p = np.array([[0.1, 0.9], [0.7, 0.3]], np.float32)
>>> fields, tags, extra = decode_label(p, "state", np.array(["ok", "bad"], object), softmax=False)
>>> list(tags["state"]), [round(float(v), 2) for v in fields["state_probability"]]
(['bad', 'ok'], [0.9, 0.7])
>>> fields, _, _ = decode_regression(np.array([[1.5], [2.0]]), "people", None)
>>> fields["people"].tolist()
[1.5, 2.0]
"""
from __future__ import annotations

import numpy as np


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _scores(out: np.ndarray, softmax: bool) -> np.ndarray:
    x = np.asarray(out, np.float64).reshape(len(out), -1)
    return _softmax(x) if softmax else x


def decode_label(out, field: str, labels: np.ndarray, softmax: bool):
    """Top-1 class: tag ``field`` = label, field ``field_probability``."""
    p = _scores(out, softmax)
    best = p.argmax(axis=1)
    return ({f"{field}_probability": p[np.arange(len(p)), best]}, {field: labels[best]}, {})


def decode_topk(out, field: str, labels: np.ndarray, softmax: bool, k: int):
    """Top-k classes: tags ``field_1..k``, fields ``field_1_probability..``, best first."""
    p = _scores(out, softmax)
    k = min(k, p.shape[1])
    if k < p.shape[1]:  # partition first: O(classes) instead of a full sort per record
        cand = np.argpartition(-p, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(p, cand, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(cand, order, axis=1)
    else:
        top = np.argsort(-p, axis=1, kind="stable")
    probs = np.take_along_axis(p, top, axis=1)
    fields = {f"{field}_{i + 1}_probability": probs[:, i] for i in range(k)}
    tags = {f"{field}_{i + 1}": labels[top[:, i]] for i in range(k)}
    return fields, tags, {}


def decode_regression(out, field: str, names: list[str] | None):
    """Values as float fields: ``field`` for one value, else ``names`` or ``field_0..m-1``."""
    x = np.asarray(out, np.float64).reshape(len(out), -1)
    if names:
        if len(names) != x.shape[1]:
            raise ValueError(f"{len(names)} names for {x.shape[1]} output values")
        return {n: x[:, i] for i, n in enumerate(names)}, {}, {}
    if x.shape[1] == 1:
        return {field: x[:, 0]}, {}, {}
    return {f"{field}_{i}": x[:, i] for i in range(x.shape[1])}, {}, {}


def decode_raw(out, field: str):
    """The record's own slice of the tensor (a copy) as an annotation ``field``."""
    col = np.empty(len(out), object)
    for i in range(len(out)):
        col[i] = np.array(out[i])
    return {}, {}, {field: col}


def read_labels(path) -> list[str]:
    """One label per line; blank lines at the end are ignored."""
    with open(path, encoding="utf-8") as fh:
        labels = [line.strip() for line in fh.read().splitlines()]
    while labels and not labels[-1]:
        labels.pop()
    return labels
