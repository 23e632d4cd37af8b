"""Check a loaded model against the stage's ``feeds:``/``outputs:`` and build the input builders and decoders.

Every mismatch is a :class:`~pipeline.inference.model.ModelError` naming the stage, the tensor,
what the model declares and what the config gives, and what to change.
"""
from __future__ import annotations

from functools import partial
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .decode import decode_label, decode_raw, decode_regression, decode_topk, read_labels
from .inputs import FieldsBuilder, FieldsInput, FrameBuilder, FrameInput, InputSpec, WindowBuilder, WindowInput
from .model import LoadedModel, ModelError, TensorInfo


class OutputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    decode: Literal["label", "topk", "regression", "raw"] = Field(
        description="`label`: top class as a tag + `_probability` field; `topk`: the k best; "
                    "`regression`: numbers as fields; `raw`: the tensor as an annotation.")
    field: str | None = Field(None, description="Name of the tag/field/annotation written (default: the output's name).")
    labels: str | list[str] | None = Field(
        None, description="Class names, or a file with one per line (relative like `model`); "
                          "default: `<model>.labels` beside the model.")
    k: int = Field(3, ge=1, le=1000, description="How many classes `topk` writes.")
    softmax: bool = Field(False, description="Apply softmax first (the model outputs logits).")
    names: list[str] | None = Field(None, description="`regression`: one field name per output value.")


def _dims(shape: list) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) else (d or "?") for d in shape) + "]"


def _check_shape(where: str, info: TensorInfo, per_record: tuple[int, ...], hint: str) -> None:
    declared = info.shape[1:]
    ok = len(declared) == len(per_record) and all(
        not isinstance(d, int) or d == g for d, g in zip(declared, per_record))
    if not ok:
        raise ModelError(f"{where}: model input {info.name!r} is {info.describe()} but the config builds "
                         f"{_dims(['batch', *per_record])} — {hint}")


def make_builders(specs: dict[str, InputSpec], model: LoadedModel, where: str, old=None) -> dict:
    """One builder per model input, checked against the declared names, shapes and dtypes.

    ``old`` (the builders of the model being replaced) hands window history to the new builders.
    """
    declared = ", ".join(f"{n} {i.describe()}" for n, i in model.inputs.items())
    missing = [n for n in model.inputs if n not in specs]
    unknown = [n for n in specs if n not in model.inputs]
    if missing or unknown:
        what = (f"model input(s) {', '.join(map(repr, missing))} have no entry in `feeds:`" if missing else
                f"`feeds:` names {', '.join(map(repr, unknown))}, which the model does not have")
        raise ModelError(f"{where}: {what}; {model.path.name} declares: {declared}")
    builders = {}
    for name, spec in specs.items():
        info = model.inputs[name]
        if spec.dtype is not None and np.dtype(spec.dtype) != np.dtype(info.dtype):
            raise ModelError(f"{where}: model input {name!r} is {info.describe()} but `dtype: {spec.dtype}` is "
                             f"configured — remove `dtype:` or set it to {np.dtype(info.dtype).name}")
        dtype = info.dtype
        if isinstance(spec, FrameInput):
            size = spec.size
            rank_ok = len(info.shape) == 4
            h_ax, w_ax, c_ax = (2, 3, 1) if spec.layout == "NCHW" else (1, 2, 3)
            if size is None:
                hw = (info.shape[h_ax], info.shape[w_ax]) if rank_ok else (None, None)
                if not all(isinstance(d, int) for d in hw):
                    raise ModelError(f"{where}: model input {name!r} is {info.describe()}, which does not fix the "
                                     f"frame size for layout {spec.layout} — set `size: [height, width]`")
                size = hw
            channels = 1 if spec.color == "gray" else 3
            per = (channels, *size) if spec.layout == "NCHW" else (*size, channels)
            _check_shape(where, info, per, "check `layout` (NCHW/NHWC), `color` (gray = 1 channel, rgb/bgr = 3) and `size`")
            builders[name] = FrameBuilder(spec, dtype, where, tuple(size))
        elif isinstance(spec, FieldsInput):
            _check_shape(where, info, (len(spec.fields),), "list one field per model feature")
            builders[name] = FieldsBuilder(spec, dtype, where)
        else:
            assert isinstance(spec, WindowInput)
            L, F = spec.length, len(spec.fields)
            per = (L * F,) if spec.flatten else (L, F)
            _check_shape(where, info, per, "check `length`, `fields` and `flatten`")
            b = WindowBuilder(spec, dtype, where)
            if old and isinstance(old.get(name), WindowBuilder) and old[name].spec == spec:
                b.history = old[name].history
            builders[name] = b
    return builders


def _labels(spec: OutputSpec, model: LoadedModel, resolve, where: str, out: TensorInfo) -> np.ndarray:
    if isinstance(spec.labels, list):
        labels = spec.labels
    else:
        path = resolve(spec.labels) if spec.labels else model.path.with_suffix(".labels")
        if not path.is_file():
            raise ModelError(f"{where}: output {out.name!r} decodes as {spec.decode} but the labels file {path} does not "
                             "exist — set `labels:` to a file with one class name per line, or to a list")
        labels = read_labels(path)
    classes = out.shape[-1] if out.shape else None
    if isinstance(classes, int) and classes != len(labels):
        raise ModelError(f"{where}: output {out.name!r} is {out.describe()} ({classes} classes) but there are "
                         f"{len(labels)} labels — the labels file must have one line per class")
    arr = np.empty(len(labels), object)
    arr[:] = labels
    return arr


def make_decoders(specs: dict[str, OutputSpec] | None, model: LoadedModel, resolve, where: str) -> list:
    """(output name, decode function) pairs; with no ``outputs:`` every output goes raw to an annotation.

    ``resolve`` turns a relative labels path into a path (the stage's rule for relative paths)."""
    if not specs:
        return [(n, partial(decode_raw, field=n)) for n in model.outputs]
    unknown = [n for n in specs if n not in model.outputs]
    if unknown:
        raise ModelError(f"{where}: `outputs:` names {', '.join(map(repr, unknown))}, but {model.path.name} has "
                         f"outputs: {', '.join(f'{n} {i.describe()}' for n, i in model.outputs.items())}")
    decoders = []
    for name, spec in specs.items():
        out, field = model.outputs[name], spec.field or name
        if spec.decode in ("label", "topk"):
            labels = _labels(spec, model, resolve, where, out)
            fn = (partial(decode_label, field=field, labels=labels, softmax=spec.softmax) if spec.decode == "label"
                  else partial(decode_topk, field=field, labels=labels, softmax=spec.softmax, k=spec.k))
        elif spec.decode == "regression":
            values = int(np.prod([d for d in out.shape[1:]])) if all(isinstance(d, int) for d in out.shape[1:]) else None
            if spec.names and values is not None and len(spec.names) != values:
                raise ModelError(f"{where}: output {name!r} is {out.describe()} ({values} values per record) but "
                                 f"`names:` lists {len(spec.names)}")
            fn = partial(decode_regression, field=field, names=spec.names)
        else:
            fn = partial(decode_raw, field=field)
        decoders.append((name, fn))
    return decoders
