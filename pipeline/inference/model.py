"""Load an ONNX model verified by sha256, describe its inputs/outputs, run it with fixed or dynamic batch.

The model bytes are read once, hashed, and the session is built from those same bytes, so the
model that runs is exactly the model that was verified (no window between check and load).

A model path is either a ``.onnx`` file or a *versioned directory* holding a ``current`` pointer:
a symlink to, or a text file naming, a version (``v3``) that is a file or a folder with one
``.onnx`` inside.  The version name becomes ``model_version``; for a plain file it is
``<stem>@<first 12 hex of sha256>``.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp()); (d / "v1").mkdir(); _ = (d / "v1" / "m.onnx").write_bytes(b"x")
>>> _ = (d / "current").write_text("v1\\n")
>>> p, v = resolve_model(d); (p.name, v)
('m.onnx', 'v1')
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .integrity import VERSION_NAME, IntegrityError, TrustPolicy, expected_digests, remember_serial

ORT_DTYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(int32)": np.int32, "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}
PROVIDER_NAMES = {
    "cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider", "coreml": "CoreMLExecutionProvider", "dml": "DmlExecutionProvider",
}


class ModelError(Exception):
    """The model cannot be used: unreadable, tampered with (sha256), or not what the config expects."""


class ModelRefused(ModelError):
    """The model's bytes, pointer or manifest do not verify (integrity, not a broken model): counted as ``model_refused``."""


def resolve_model(path: Path) -> tuple[Path, str | None]:
    """(model file, version name or None) for a file or a versioned directory with a ``current`` pointer.

    The pointer must name a version directly inside the folder (``v3``, not ``../x`` or an absolute path), and the
    model file it leads to, after following symlinks, must lie inside the folder too."""
    path = Path(path)
    if not path.is_dir():
        return path, None
    pointer = path / "current"
    if pointer.is_symlink():
        link = (path / os.readlink(pointer)).resolve()
        version = link.name if link.parent == path.resolve() else os.readlink(pointer)
    elif pointer.is_file():
        version = pointer.read_text(encoding="utf-8").strip()
    else:
        raise ModelError(f"{path} is a directory without a 'current' pointer: add a file 'current' naming the version "
                         "(e.g. 'v2') or a symlink current -> v2")
    if not VERSION_NAME.match(version) or version in (".", ".."):
        raise ModelError(f"{pointer} points at {version!r}, which is not a version folder inside {path}: a pointer "
                         "names a version directly inside the folder (e.g. 'v2'); refusing to leave the folder")
    target = path / version
    if target.is_dir():
        found = sorted(target.glob("*.onnx"))
        if len(found) != 1:
            raise ModelError(f"version folder {target} must hold exactly one .onnx file (found {len(found)})")
        target = found[0]
    if not target.is_file():
        raise ModelError(f"{pointer} points at {version!r}, but {target} does not exist")
    root = path.resolve()
    if not target.resolve().is_relative_to(root):
        raise ModelError(f"{target} leads to {target.resolve()}, outside the model folder {root} (a symlink?): "
                         "refusing to load a model from outside the folder")
    return target, version


@dataclass
class TensorInfo:
    name: str
    shape: list            # ints for fixed dims, str/None for symbolic ones
    dtype: type

    def describe(self) -> str:
        dims = ", ".join(str(d) if isinstance(d, int) else (d or "?") for d in self.shape)
        return f"[{dims}] {np.dtype(self.dtype).name}"


@dataclass
class LoadedModel:
    """A ready session and what it declares."""

    path: Path
    sha256: str
    version: str
    session: object
    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]
    providers: list[str]
    fixed_batch: int | None = None
    output_names: list[str] = field(default_factory=list)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on ``n`` records; a fixed-batch model gets chunks of its size, the last one padded."""
        n = len(next(iter(feeds.values())))
        b = self.fixed_batch
        if b is None or n == b:
            return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))
        parts: list[list[np.ndarray]] = []
        for start in range(0, n, b):
            chunk = {k: v[start:start + b] for k, v in feeds.items()}
            m = len(next(iter(chunk.values())))
            if m < b:  # pad by repeating the last record; padded rows are dropped below
                chunk = {k: np.concatenate([v, np.repeat(v[-1:], b - m, axis=0)]) for k, v in chunk.items()}
            parts.append([o[:m] for o in self.session.run(self.output_names, chunk)])
        return {name: np.concatenate([p[i] for p in parts]) for i, name in enumerate(self.output_names)}


def _info(arg) -> TensorInfo:
    dtype = ORT_DTYPES.get(arg.type)
    if dtype is None:
        raise ModelError(f"tensor {arg.name!r} has type {arg.type}, which the onnx stage does not support")
    return TensorInfo(arg.name, list(arg.shape), dtype)


def choose_providers(asked: list[str]) -> list[str]:
    """The asked providers that this onnxruntime has, in order, always ending with CPU."""
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    wanted = list(dict.fromkeys(PROVIDER_NAMES.get(p.lower(), p) for p in asked))
    missing = [p for p in wanted if p not in have]
    if missing:
        logging.getLogger("edgesieve.onnx").info(
            "execution provider(s) %s not available in this onnxruntime (have: %s); using the others",
            ", ".join(missing), ", ".join(sorted(have)))
    return [p for p in wanted if p in have and p != "CPUExecutionProvider"] + ["CPUExecutionProvider"]


def load_model(path: Path, *, policy: TrustPolicy = TrustPolicy(),
               providers: list[str] = ("cpu",), intra_op_threads: int = 1) -> LoadedModel:
    """Resolve, read, verify (see :mod:`pipeline.inference.integrity`) and open a model; raise :class:`ModelError`."""
    import onnxruntime as ort

    try:
        file, version = resolve_model(Path(path))
    except ModelError as exc:
        raise ModelRefused(str(exc)) from None
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read model {file}: {exc.strerror or exc}") from exc
    digest = hashlib.sha256(data).hexdigest()
    try:
        checks, serial = expected_digests(file, Path(path) if version is not None else None, version, policy)
    except IntegrityError as exc:
        raise ModelRefused(str(exc)) from None
    for expected, source in checks:
        if digest != expected:
            raise ModelRefused(f"model {file} has sha256 {digest}, expected {expected} ({source}): the file changed or "
                               "is not the pinned model; restore the right file or update the digest after checking "
                               "where it came from")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = 1
    # The stage's batch size varies from call to call (micro-batches, the frames frame_diff lets through, dead
    # letters): with the memory pattern on, onnxruntime plans memory per input shape, and the first call at a new size
    # (15 frames after single frames) cost 1.32-1.47x a steady batch of 16 per frame, 0.86-0.99x with it off; steady
    # calls cost the same either way (benchmarks/bench_onnx_shapes.py, three runs)
    opts.enable_mem_pattern = False
    opts.log_severity_level = 3
    chosen = choose_providers(list(providers))
    try:
        sess = ort.InferenceSession(data, sess_options=opts, providers=chosen)
    except Exception as exc:  # onnxruntime raises several types for a bad model
        raise ModelError(f"onnxruntime cannot load {file}: {str(exc).splitlines()[0][:300]}") from exc
    if serial is not None:
        try:
            remember_serial(policy.serial_file, Path(path), serial)
        except (IntegrityError, OSError) as exc:
            raise ModelRefused(f"model {file} verified, but its manifest serial could not be remembered: {exc}") from None
    inputs = {a.name: _info(a) for a in sess.get_inputs()}
    outputs = {a.name: _info(a) for a in sess.get_outputs()}
    firsts = {i.shape[0] if i.shape else None for i in inputs.values()}
    fixed = next(iter(firsts)) if len(firsts) == 1 and isinstance(next(iter(firsts)), int) else None
    return LoadedModel(file, digest, version or f"{file.stem}@{digest[:12]}", sess, inputs, outputs,
                       sess.get_providers(), fixed, list(outputs))
