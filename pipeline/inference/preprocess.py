"""Turn records into model input tensors, vectorised per micro-batch (numpy only).

Frames are resized without OpenCV so the runtime needs only numpy. ``area`` is true area
averaging for any sizes (each output pixel is the mean of the input area it covers, fractional
pixels weighted by their overlap: what OpenCV's ``INTER_AREA`` does when shrinking; integer factors
take a faster block-sum path with the same result). ``bilinear`` uses half-pixel centres like
``cv2.INTER_LINEAR``; ``nearest`` takes the pixel under each output pixel's centre.

The training script of the example camera model and ``benchmarks/bench_redundancy.py`` call
:func:`frames_to_tensor` too, so a model is trained, served and measured on the same inputs.

>>> import numpy as np
>>> f = np.arange(16, dtype=np.uint8).reshape(4, 4)
>>> resize_stack(f[None], 2, 2, "area")[0]
array([[ 2.5,  4.5],
       [10.5, 12.5]], dtype=float32)
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

# ITU-R BT.601 luma, the weights cv2.COLOR_BGR2GRAY uses
_LUMA_BGR = np.array([0.114, 0.587, 0.299], np.float32)


def frame_problem(frame) -> str | None:
    """Why this frame cannot be used (None when it can)."""
    if not isinstance(frame, np.ndarray):
        return f"no frame (got {type(frame).__name__})"
    if frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] not in (1, 3, 4)):
        return f"frame shape {frame.shape} is not HxW, HxWx1, HxWx3 or HxWx4"
    if frame.dtype != np.uint8 and not np.issubdtype(frame.dtype, np.floating):
        return f"frame dtype {frame.dtype} is not uint8 or float"
    if frame.shape[0] < 1 or frame.shape[1] < 1:
        return f"frame shape {frame.shape} is empty"
    if np.issubdtype(frame.dtype, np.floating) and not np.isfinite(frame).all():
        return "frame has NaN or infinite pixels"
    return None


def to_color(stack: np.ndarray, color: str, order: str) -> np.ndarray:
    """(n, h, w[, c]) -> (n, h, w, C) with C=1 for gray, 3 for rgb/bgr (a view where no arithmetic is needed)."""
    x = stack
    if x.ndim == 3:
        x = x[..., None]
    if x.shape[3] == 4:
        x = x[..., :3]
    if color == "gray":
        if x.shape[3] == 1:
            return x
        luma = _LUMA_BGR if order == "bgr" else _LUMA_BGR[::-1]
        return (x.astype(np.float32, copy=False) @ luma)[..., None]
    if x.shape[3] == 1:
        x = np.repeat(x, 3, axis=3)
    return x if color == order else x[..., ::-1]


def resize_stack(stack: np.ndarray, height: int, width: int, method: str = "area") -> np.ndarray:
    """Resize (n, h, w[, c]) frames to (n, height, width[, c]) float32 (unchanged when the size already fits)."""
    n, h, w = stack.shape[:3]
    if (h, w) == (height, width):
        return stack
    if method == "area":
        if h % height == 0 and w % width == 0:
            fy, fx = h // height, w // width
            if stack.dtype == np.uint8 and fy * fx <= 257:
                return _block_mean_uint8(stack, fy, fx)
            shape = (n, height, fy, width, fx) + stack.shape[3:]
            return stack.astype(np.float32, copy=False).reshape(shape).mean(axis=(2, 4), dtype=np.float32)
        return area_resize(stack, height, width)
    if method not in ("bilinear", "nearest"):
        raise ValueError(f"resize method must be area, bilinear or nearest, got {method!r}")
    x = stack.astype(np.float32, copy=False)
    if method == "nearest":
        ys = np.minimum((np.arange(height) + 0.5) * h / height, h - 1).astype(np.intp)
        xs = np.minimum((np.arange(width) + 0.5) * w / width, w - 1).astype(np.intp)
        return x[:, ys][:, :, xs]
    # bilinear with half-pixel centres
    sy = np.clip((np.arange(height) + 0.5) * h / height - 0.5, 0, h - 1)
    sx = np.clip((np.arange(width) + 0.5) * w / width - 0.5, 0, w - 1)
    y0, x0 = np.floor(sy).astype(np.intp), np.floor(sx).astype(np.intp)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    wy, wx = (sy - y0).astype(np.float32), (sx - x0).astype(np.float32)
    extra = (1,) * (x.ndim - 3)
    wy = wy.reshape((1, height, 1) + extra)
    wx = wx.reshape((1, 1, width) + extra)
    top = x[:, y0][:, :, x0] * (1 - wx) + x[:, y0][:, :, x1] * wx
    bottom = x[:, y1][:, :, x0] * (1 - wx) + x[:, y1][:, :, x1] * wx
    return top * (1 - wy) + bottom * wy


@lru_cache(maxsize=16)
def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float32, read only: the share of input pixel ``j`` in output pixel ``i``, the overlap of
    ``[j, j + 1)`` with the output cell ``[i n_in / n_out, (i + 1) n_in / n_out)`` over the cell's length (each row
    sums to 1; a cell shorter than a pixel, enlarging, takes the at most two pixels it overlaps)."""
    edges = np.arange(n_out + 1, dtype=np.float64) * (n_in / n_out)
    j = np.arange(n_in, dtype=np.float64)
    overlap = np.clip(np.minimum(edges[1:, None], j + 1) - np.maximum(edges[:-1, None], j), 0.0, None)
    weights = (overlap * (n_out / n_in)).astype(np.float32)
    weights.setflags(write=False)
    return weights


MATMUL_MACS_PER_PIXEL = 250   # above this many multiply-adds per input pixel the running sums are cheaper


def _matmul_order(h: int, w: int, height: int, width: int) -> str | None:
    """``"rows"`` (``(Ry @ x) @ Rx.T``) or ``"cols"`` (``Ry @ (x @ Rx.T)``), whichever does fewer multiply-adds per
    input pixel, or None when even that is more than ``MATMUL_MACS_PER_PIXEL`` (then the running sums are cheaper)."""
    rows, cols = height + height * width / h, width + width * height / w
    if min(rows, cols) > MATMUL_MACS_PER_PIXEL:
        return None
    return "rows" if rows <= cols else "cols"


def _area_by_matmul(h: int, w: int, height: int, width: int) -> bool:
    """Whether ``resize_stack(..., "area")`` from h x w to height x width takes the matrix products (not the same
    size, not an integer factor, and cheap enough by ``_matmul_order``)."""
    return ((h, w) != (height, width) and bool(h % height or w % width)
            and _matmul_order(h, w, height, width) is not None)


def area_resize(stack: np.ndarray, height: int, width: int) -> np.ndarray:
    """True area averaging of (n, h, w[, c]) frames to (n, height, width[, c]) float32, any factors.

    Output pixel (i, j) is the mean of the input over the rectangle it covers, ``[i*h/height, (i+1)*h/height)``
    by ``[j*w/width, (j+1)*w/width)``, with partly covered pixels weighted by their overlap. Shrinking, this is
    OpenCV's ``INTER_AREA``; enlarging, each output pixel mixes the (at most two) input pixels it overlaps.

    Two exact ways, chosen by cost: to a small output (a 128x96 model input: about 150 multiply-adds per input
    pixel) the mean is separable, ``Ry @ frame @ Rx.T`` with each axis' overlap weights (``_area_weights``, kept per
    size), two float32 matrix products per frame and channel in BLAS (a 308x231 frame about 18x faster than the
    running sums, benchmarks/bench_preprocess.py); to a large one (640x640: about 1,000 per pixel) the running-sum
    integrals along each axis (``_integral_area_resize``), whose cost does not grow with the output. They agree
    within 2e-4 on the 0..255 scale. Either way every frame is computed on its own, so the result does not depend
    on how frames are batched.

    >>> f = np.array([[0, 3, 6]], np.uint8)                  # 3 pixels -> 2: [0, 1.5) and [1.5, 3)
    >>> area_resize(f[None], 1, 2)[0].tolist()
    [[1.0, 5.0]]
    """
    n, h, w = stack.shape[:3]
    order = _matmul_order(h, w, height, width)
    if order is None:
        return _integral_area_resize(stack, height, width)
    ry, rx = _area_weights(h, height), _area_weights(w, width).T
    if stack.ndim == 3:
        planes = np.ascontiguousarray(stack, dtype=np.float32)
    else:
        planes = np.empty((n, stack.shape[3], h, w), np.float32)   # (n, c, h, w): contiguous float32 planes for
        np.copyto(planes, np.moveaxis(stack, 3, 1), casting="unsafe")   # BLAS, cast and transposed in one pass
    out = (ry @ planes) @ rx if order == "rows" else ry @ (planes @ rx)
    return out if stack.ndim == 3 else np.ascontiguousarray(np.moveaxis(out, 1, 3))


def _area_integral(cum: np.ndarray, values: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Integral of the piecewise-constant ``values`` along ``axis`` from 0 to each of the ``size + 1``
    cell edges ``j * length / size`` (``cum``: the running sums along ``axis``, with a leading 0)."""
    length = values.shape[axis]
    edges = np.arange(size + 1, dtype=np.float64) * (length / size)
    idx = np.minimum(np.floor(edges).astype(np.intp), length - 1)
    frac = edges - idx                                    # 1.0 at the far end (idx = length - 1)
    shape = [1] * values.ndim
    shape[axis] = size + 1
    return np.take(cum, idx, axis=axis) + np.take(values, idx, axis=axis) * frac.reshape(shape)


def _integral_area_resize(stack: np.ndarray, height: int, width: int) -> np.ndarray:
    """`area_resize` by exact integrals of running sums, one pass per axis for the whole stack (int64 for uint8)."""
    n, h, w = stack.shape[:3]
    x = stack if stack.dtype == np.uint8 else stack.astype(np.float64, copy=False)
    acc = np.int64 if x.dtype == np.uint8 else np.float64
    pad = [(0, 0)] * x.ndim
    pad[2] = (1, 0)
    cols = np.diff(_area_integral(np.pad(np.cumsum(x, axis=2, dtype=acc), pad), x, width, 2), axis=2)
    pad[2], pad[1] = (0, 0), (1, 0)
    rows = np.diff(_area_integral(np.pad(np.cumsum(cols, axis=1), pad), cols, height, 1), axis=1)
    return (rows * ((height * width) / (h * w))).astype(np.float32)


def _block_mean_uint8(stack: np.ndarray, fy: int, fx: int) -> np.ndarray:
    """Integer-factor block mean of uint8 frames with integer adds (exact sums; ~5x faster than float mean)."""
    n, h, w = stack.shape[:3]
    rows = stack.reshape(n, h // fy, fy, -1)
    acc = rows[:, :, 0].astype(np.uint16)
    for k in range(1, fy):
        acc += rows[:, :, k]
    cols = acc.reshape((n, h // fy, w // fx, fx) + stack.shape[3:])
    out = cols[:, :, :, 0].astype(np.uint16)
    for k in range(1, fx):
        out += cols[:, :, :, k]
    return out.astype(np.float32) * np.float32(1.0 / (fy * fx))


def frames_to_tensor(frames: list[np.ndarray], *, height: int, width: int, color: str, order: str,
                     resize: str, scale: float, mean, std, layout: str, dtype: np.dtype) -> np.ndarray:
    """Frames (any sizes) -> one (n, C, H, W) or (n, H, W, C) tensor.

    Frames of the same size are processed together as one numpy stack.
    """
    groups: dict[tuple, list[int]] = {}
    for i, f in enumerate(frames):
        groups.setdefault((f.shape, f.dtype.str), []).append(i)
    if len(groups) == 1:  # the usual case: one camera, one size; no scatter copy
        return _group_tensor(frames, height, width, color, order, resize, scale, mean, std, layout, dtype)
    out = None
    for idx in groups.values():
        x = _group_tensor([frames[i] for i in idx], height, width, color, order, resize, scale, mean, std, layout, dtype)
        if out is None:
            out = np.empty((len(frames),) + x.shape[1:], dtype)
        out[idx] = x
    return out


def _group_tensor(frames, height, width, color, order, resize, scale, mean, std, layout, dtype) -> np.ndarray:
    args = (height, width, color, order, resize, scale, mean, std, layout)
    if frames[0].size < 65536 or len(frames) == 1:
        return _cast(_float_tensor(frames, *args), dtype)
    # large frames: one at a time straight into the output (no stacked copy of the raw pixels)
    first = _float_tensor(frames[:1], *args)
    out = np.empty((len(frames),) + first.shape[1:], np.float32)
    out[0] = first[0]
    for i in range(1, len(frames)):
        _float_tensor(frames[i:i + 1], *args, out=out[i:i + 1])
    return _cast(out, dtype)


def _float_tensor(frames, height, width, color, order, resize, scale, mean, std, layout, out=None) -> np.ndarray:
    stack = np.stack(frames) if len(frames) > 1 else frames[0][None]
    if stack.ndim == 4 and stack.shape[3] == 1 and color == "gray":
        stack = stack[..., 0]
    # both are linear: resizing first does the least work on an integer factor (uint8 block sums of every channel);
    # at any other factor to a small input the area mean is a matrix product per channel (`area_resize`), so a gray
    # model takes the luma first
    if color == "gray" and stack.ndim == 4 and resize == "area" and _area_by_matmul(*stack.shape[1:3], height, width):
        x = resize_stack(to_color(stack, color, order)[..., 0], height, width, resize)[..., None]
    else:
        x = to_color(resize_stack(stack, height, width, resize), color, order)
    if layout == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    # one pass from the (strided, maybe uint8) view into a fresh contiguous float32 tensor
    if out is None:
        out = np.empty(x.shape, np.float32)
    if scale != 1.0:
        np.multiply(x, np.float32(scale), out=out, casting="unsafe")
    else:
        np.copyto(out, x, casting="unsafe")
    per_channel = (-1, 1, 1) if layout == "NCHW" else (-1,)
    if mean is not None:
        np.subtract(out, np.asarray(mean, np.float32).reshape(per_channel), out=out)
    if std is not None:
        np.divide(out, np.asarray(std, np.float32).reshape(per_channel), out=out)
    return out


def _cast(out: np.ndarray, dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(out), info.min, info.max).astype(dtype)
    return out if dtype == np.float32 else out.astype(dtype)
