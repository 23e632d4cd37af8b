"""Turn records into model input tensors, vectorised per micro-batch (numpy only).

Frames are resized without OpenCV so the runtime needs only numpy:
an integer down-scale factor uses block averaging (identical to OpenCV's
``INTER_AREA`` for integer factors), anything else uses bilinear interpolation
(half-pixel centres, like ``cv2.INTER_LINEAR``).

>>> import numpy as np
>>> f = np.arange(16, dtype=np.uint8).reshape(4, 4)
>>> resize_stack(f[None], 2, 2, "area")[0]
array([[ 2.5,  4.5],
       [10.5, 12.5]], dtype=float32)
"""
from __future__ import annotations

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
    """(n, h, w[, c]) -> float32 (n, h, w, C) with C=1 for gray, 3 for rgb/bgr."""
    x = stack.astype(np.float32, copy=False)
    if x.ndim == 3:
        x = x[..., None]
    if x.shape[3] == 4:
        x = x[..., :3]
    if color == "gray":
        if x.shape[3] == 1:
            return x
        luma = _LUMA_BGR if order == "bgr" else _LUMA_BGR[::-1]
        return (x @ luma)[..., None]
    if x.shape[3] == 1:
        x = np.repeat(x, 3, axis=3)
    return x if color == order else x[..., ::-1]


def resize_stack(stack: np.ndarray, height: int, width: int, method: str = "area") -> np.ndarray:
    """Resize (n, h, w[, c]) frames to (n, height, width[, c]) float32."""
    n, h, w = stack.shape[:3]
    x = stack.astype(np.float32, copy=False)
    if (h, w) == (height, width):
        return x
    if method == "area" and h % height == 0 and w % width == 0:
        fy, fx = h // height, w // width
        shape = (n, height, fy, width, fx) + x.shape[3:]
        return x.reshape(shape).mean(axis=(2, 4), dtype=np.float32)
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


def frames_to_tensor(frames: list[np.ndarray], *, height: int, width: int, color: str, order: str,
                     resize: str, scale: float, mean, std, layout: str, dtype: np.dtype) -> np.ndarray:
    """Frames (any sizes) -> one (n, C, H, W) or (n, H, W, C) tensor.

    Frames of the same size are processed together as one numpy stack.
    """
    out = None
    groups: dict[tuple, list[int]] = {}
    for i, f in enumerate(frames):
        groups.setdefault((f.shape, f.dtype.str), []).append(i)
    for idx in groups.values():
        stack = np.stack([frames[i] for i in idx]) if len(idx) > 1 else frames[idx[0]][None]
        if stack.ndim == 4 and stack.shape[3] == 1 and color == "gray":
            stack = stack[..., 0]
        # resize before colour conversion when the channel count only shrinks (less work)
        if color == "gray" and stack.ndim == 4:
            x = resize_stack(to_color(stack, color, order), height, width, resize)
        else:
            x = to_color(resize_stack(stack, height, width, resize), color, order)
        if scale != 1.0:
            x = x * np.float32(scale)
        if mean is not None:
            x = x - np.asarray(mean, np.float32)
        if std is not None:
            x = x / np.asarray(std, np.float32)
        if layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            x = np.clip(np.rint(x), info.min, info.max)
        if out is None:
            out = np.empty((len(frames),) + x.shape[1:], dtype)
        out[idx] = x
    return out
