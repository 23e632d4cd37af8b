"""Difference features between frames (or numeric vectors) and a reference, vectorised over a batch.

Frames are reduced once to a small grayscale copy (:func:`prepare`), then compared with a reference
copy by one of the features in :data:`FEATURES`. Every function takes a stack of prepared frames
``(n, h, w)`` and one reference ``(h, w)`` and returns ``n`` distances in ``[0, 1]`` (``vector_norm``:
``[0, inf)``), so a whole micro-batch is compared with one numpy expression.

>>> import numpy as np
>>> ref = np.zeros((32, 32), dtype=np.uint8)
>>> frames = np.stack([ref, ref.copy()])
>>> frames[1, :8, :8] = 200                      # one bright 8x8 square appears
>>> small = prepare(frames, downscale=4)         # (2, 8, 8) float32 in 0..255
>>> small.shape
(2, 8, 8)
>>> pixel_fraction(small, small[0], pixel_threshold=25.0).tolist()
[0.0, 0.0625]
>>> block_fraction(small, small[0], pixel_threshold=25.0, blocks=4, block_min=0.5).tolist()
[0.0, 0.0625]
"""

from __future__ import annotations

import math

import numpy as np

FEATURES = ("pixel", "block", "histogram", "vector_norm")
SAMPLINGS = ("stride", "sparse", "lines", "area")

_LUMA = np.array([0.114, 0.587, 0.299], dtype=np.float32)  # BGR order (OpenCV's default)
_HALF_LUMA = np.array([np.float32(v * 0.5) for v in _LUMA], np.float32)[:, None, None, None]   # `sparse`: the mean of two samples
_LUMA_4D = _LUMA[:, None, None, None].copy()                                                      # `lines`: one sample


def grayscale(frames: np.ndarray) -> np.ndarray:
    """(n, h, w) or (n, h, w, c) frames -> (n, h, w) float32 gray levels (BGR luma for 3 channels)."""
    a = np.asarray(frames)
    if a.ndim == 3:
        return a.astype(np.float32, copy=False)
    if a.ndim != 4:
        raise ValueError(f"frames must be (n, h, w) or (n, h, w, c), got shape {a.shape}")
    c = a.shape[3]
    if c == 1:
        return a[..., 0].astype(np.float32, copy=False)
    if c in (3, 4):
        return a[..., :3].astype(np.float32, copy=False) @ _LUMA
    return a.astype(np.float32, copy=False).mean(axis=3)


def _sparse_grid(h: int, w: int, f: int):
    """Sample positions of ``sparse``: in each ``f x f`` cell, two pixels of its middle row, a quarter and
    three quarters across (row slice, first column slice, second column slice, cells down, cells across)."""
    rows, cols = h // f, w // f
    r, c0, c1 = f // 2, f // 4, f // 4 + f // 2
    return slice(r, rows * f, f), slice(c0, cols * f, f), slice(c1, cols * f, f), rows, cols


def _stride_grid(h: int, w: int, f: int):
    """Sample positions of ``stride``: the centre pixel of each ``f x f`` cell (rows, columns, cells down, across)."""
    rows, cols = h // f, w // f
    return slice(f // 2, rows * f, f), slice(f // 2, cols * f, f), rows, cols


def _lines_grid(h: int, w: int, f: int):
    """Sample positions of ``lines``: one row in ``2 f`` (the middle of each band of ``2 f`` rows) and on it one pixel in
    ``f / 2`` (the middle of each run): cells of ``2 f x f / 2`` pixels, as many as ``sparse``'s ``f x f`` cells for an
    even ``f`` (rows, columns, cells down, cells across)."""
    step = max(1, f // 2)
    rows, cols = h // (2 * f), w // step
    return slice(f, rows * 2 * f, 2 * f), slice(step // 2, cols * step, step), rows, cols


def _lines_luma(a: np.ndarray) -> np.ndarray:
    """``lines``' gray level of sampled pixels ``(n, rows, cols[, c])``, float32: the pixel for 1 channel, the BGR luma
    for 3-4 channels (each channel's float32 product, then (b + g) + r), the channel mean otherwise."""
    if a.ndim == 3 or a.shape[-1] == 1:
        return (a if a.ndim == 3 else a[..., 0]).astype(np.float32)
    if a.shape[-1] not in (3, 4):
        return a.astype(np.float32).mean(axis=-1)
    out = a[..., 0] * _LUMA[0]
    out += a[..., 1] * _LUMA[1]
    out += a[..., 2] * _LUMA[2]
    return out


def _one_channel(a: np.ndarray) -> np.ndarray:
    """``stride``'s gray level of sampled pixels ``(..., [c])``: the pixel itself for 1 channel, green (the
    middle channel of BGR and RGB, and of BGRA/RGBA) for 3-4 channels, the channel mean otherwise."""
    if a.ndim == 3 or a.shape[-1] == 1:
        return a if a.ndim == 3 else a[..., 0]
    return a[..., 1] if a.shape[-1] in (3, 4) else a.astype(np.float32).mean(axis=-1)


def prepare(frames: np.ndarray, downscale: int = 8, mode: str = "sparse") -> np.ndarray:
    """Reduce frames ``(n, h, w[, c])`` to small grayscale copies ``(n, h // downscale, w // downscale)``.

    ``mode="sparse"`` (default) averages the BGR luma of two pixels of the cell's middle row (a quarter
    and three quarters across); ``"stride"`` takes one value per ``downscale x downscale`` cell: its centre
    pixel's green channel (the pixel for gray frames), a fixed-stride view gathered in one strided copy per
    frame, with no arithmetic on the frame; ``"lines"`` takes the BGR luma of one pixel in ``downscale / 2`` on one row in
    ``2 x downscale`` (half the rows of ``sparse``, twice the columns: a ``(h // (2 downscale), w // (downscale / 2))``
    copy with as many cells as the others for an even ``downscale``); ``"area"`` averages the luma of every pixel of
    the cell. ``stride`` and ``sparse`` read one row in ``downscale`` of the frame, ``lines`` one in ``2 x downscale``,
    ``area`` all of it. Edges not divisible by ``downscale`` are cropped; values stay on the input's scale (0..255 for
    uint8 frames), as float32.
    """
    a = np.asarray(frames)
    if a.ndim not in (3, 4):
        raise ValueError(f"frames must be (n, h, w) or (n, h, w, c), got shape {a.shape}")
    if mode not in SAMPLINGS:
        raise ValueError(f"mode must be one of {SAMPLINGS}, got {mode!r}")
    n, h, w = a.shape[:3]
    f = max(1, int(downscale))
    hh, ww = (h // f) * f, (w // f) * f
    if hh == 0 or ww == 0 or (mode == "lines" and h < 2 * f):
        raise ValueError(f"frame {h}x{w} is smaller than downscale={f}" + (" x 2 (lines)" if mode == "lines" else ""))
    if mode == "lines":
        r, c, _, _ = _lines_grid(h, w, f)
        return _lines_luma(a[:, r, c])
    if mode == "stride":
        r, c, _, _ = _stride_grid(h, w, f)
        return _one_channel(a[:, r, c]).astype(np.float32)
    if f == 1:
        return np.ascontiguousarray(grayscale(a))
    if mode == "sparse":
        r, c0, c1, _, _ = _sparse_grid(h, w, f)
        return (grayscale(a[:, r, c0]) + grayscale(a[:, r, c1])) * np.float32(0.5)
    g = grayscale(a[:, :hh, :ww])
    return g.reshape(n, hh // f, f, ww // f, f).mean(axis=(2, 4), dtype=np.float32)


def _buffer(scratch: dict | None, name: str, shape: tuple, dtype) -> np.ndarray:
    """A ``shape`` array of ``dtype``: fresh without ``scratch``, else carved out of ``scratch[name]`` (grown when too
    small, kept between calls: a fresh buffer of a few hundred kB is new pages, and their first touch costs page
    faults every call)."""
    if scratch is None:
        return np.empty(shape, dtype)
    size = math.prod(shape)
    a = scratch.get(name)
    if a is None or a.size < size or a.dtype != dtype:
        a = scratch[name] = np.empty(size, dtype)
    return a[:size].reshape(shape)


def prepare_list(frames, downscale: int = 8, mode: str = "sparse", scratch: dict | None = None) -> np.ndarray:
    """:func:`prepare` for a list (or object array) of same-shaped frames, without first copying them into one big stack.

    With ``stride`` the sampled values are gathered straight into the float32 result, one strided copy
    per frame (a few microseconds for a 768x576 frame); with ``sparse``, one strided copy per frame of both
    samples and all channels (even ``downscale``; per sample and channel otherwise) into a small uint8 buffer,
    then grayscale and the mean of the two samples in one vectorised pass over the whole batch; with ``lines``, one
    strided copy per frame of every sample and channel, then the luma of the batch in three calls. Same values as
    :func:`prepare`, bit for bit.

    ``scratch`` (a dict the caller keeps): the intermediate buffers and, for ``sparse`` and ``lines``, the result itself are
    reused from call to call (no new pages to fault in): the result is then only valid until the next call with
    the same ``scratch``; copy what must outlive it."""
    f = max(1, int(downscale))
    a0 = np.asarray(frames[0])
    c = 1 if a0.ndim == 2 else (a0.shape[2] if a0.ndim == 3 else 0)
    if mode == "stride" and c in (1, 3, 4):
        r, cc, rows, cols = _stride_grid(a0.shape[0], a0.shape[1], f)
        out = np.empty((len(frames), rows, cols), np.float32)
        line = a0.shape[1] * c
        touch = np.empty(((line + 63) // 64, rows), np.uint8) if a0.dtype.itemsize == 1 else None
        ch = None if a0.ndim == 2 else (0 if c == 1 else 1)
        for i, x in enumerate(frames):              # one strided copy (and cast) per frame, in C
            if touch is not None and x.flags.c_contiguous:   # the sampled rows' misses overlapped (see _gather_pairs)
                np.copyto(touch, np.ndarray(touch.shape, np.uint8, x, r.start * line, (64, r.step * line)))
            out[i] = x[r, cc] if ch is None else x[r, cc, ch]
        return out
    if mode == "lines" and a0.dtype == np.uint8 and c in (1, 3, 4) and a0.shape[0] >= 2 * f and a0.shape[1] >= f:
        return _lines_list(frames, f, c, scratch)
    if mode != "sparse" or f < 2 or a0.dtype != np.uint8 or c not in (1, 3, 4):
        return prepare(np.stack(frames), f, mode)
    r, c0, c1, rows, cols = _sparse_grid(a0.shape[0], a0.shape[1], f)
    if rows == 0 or cols == 0:
        return prepare(np.stack(frames), f, mode)
    use = 1 if c == 1 else 3                        # gray, or the BGR luma of 3-4 channels
    n = len(frames)
    buf = _buffer(scratch, "samples", (use, 2, n, rows, cols), np.uint8)
    if f % 2 == 0:                                  # the two samples of a cell are f/2 apart: one strided view holds both
        _gather_pairs(frames, buf, r, slice(c0.start, cols * f, f // 2), rows, cols, use, scratch)
    else:
        for i, x in enumerate(frames):              # one strided copy per frame, sample and channel, in C
            line = x[r]
            if x.ndim == 2:
                buf[0, 0, i], buf[0, 1, i] = line[:, c0], line[:, c1]
            else:
                for k in range(use):
                    buf[k, 0, i], buf[k, 1, i] = line[:, c0, k], line[:, c1, k]
    s = np.add(buf[:, 0], buf[:, 1], out=_buffer(scratch, "sums", (use, n, rows, cols), np.uint16), dtype=np.uint16)
    out = _buffer(scratch, "luma", (n, rows, cols), np.float32)
    if use == 1:
        return np.multiply(s[0], np.float32(0.5), out=out, dtype=np.float32)
    # the same float32 steps as `prepare`: (b + g) + r, each channel's product rounded to float32 first
    np.multiply(s[0], _HALF_LUMA[0, 0, 0, 0], out=out, dtype=np.float32)
    t = _buffer(scratch, "term", (n, rows, cols), np.float32)
    np.multiply(s[1], _HALF_LUMA[1, 0, 0, 0], out=t, dtype=np.float32)
    out += t
    np.multiply(s[2], _HALF_LUMA[2, 0, 0, 0], out=t, dtype=np.float32)
    out += t
    return out


def _lines_list(frames, f: int, c: int, scratch: dict | None) -> np.ndarray:
    """``lines`` for a list of same-shaped uint8 frames: per C-contiguous frame, its sampled rows touched column-first
    (see :func:`_gather_pairs`) and one strided copy of every sample and channel into a uint8 buffer; then the luma of
    the batch in three calls (one broadcast multiply, two adds: the float32 steps of :func:`prepare`)."""
    h, w = frames[0].shape[:2]
    r, cc, rows, cols = _lines_grid(h, w, f)
    use, n, line = (1 if c == 1 else 3), len(frames), w * c
    buf = _buffer(scratch, "lines", (use, n, rows, cols), np.uint8)
    touch = _buffer(scratch, "touch", ((line + 63) // 64, rows), np.uint8)
    t_shape, t_strides, t_off = touch.shape, (64, r.step * line), r.start * line
    v_shape, v_strides, v_off = (use, rows, cols), (1, r.step * line, cc.step * c), r.start * line + cc.start * c
    for i, x in enumerate(frames):
        if x.flags.c_contiguous:
            np.copyto(touch, np.ndarray(t_shape, np.uint8, x, t_off, t_strides))
            buf[:, i] = np.ndarray(v_shape, np.uint8, x, v_off, v_strides)
        else:
            v = x[r, cc]
            buf[:, i] = v.reshape(rows, cols, -1)[..., :use].transpose(2, 0, 1)
    out = _buffer(scratch, "luma", (n, rows, cols), np.float32)
    if use == 1:
        np.copyto(out, buf[0])
        return out
    t = _buffer(scratch, "terms", (3, n, rows, cols), np.float32)
    np.multiply(buf, _LUMA_4D, out=t)
    np.add(t[0], t[1], out=out)
    np.add(out, t[2], out=out)
    return out


def _gather_pairs(frames, buf, r: slice, pairs: slice, rows: int, cols: int, use: int,
                  scratch: dict | None = None) -> None:
    """Copy ``sparse``'s samples of each frame into ``buf`` ``(use, 2, n, rows, cols)`` with one strided copy per
    frame (``pairs`` alternates the two sampled columns of each cell). Each C-contiguous frame's sampled rows are
    first touched column by column, one byte per 64-byte line: the loads of all rows are then in flight together
    instead of one row after another, which is what a frame that is not in the cache costs (about a third less).
    A C-contiguous frame's views are made in one constructor call each: with frames not in the cache, every numpy
    call costs microseconds, so the per-frame path is four calls."""
    x0 = frames[0]
    h, w = x0.shape[:2]
    c = 1 if x0.ndim == 2 else x0.shape[2]
    line = w * c
    touch = _buffer(scratch, "touch", ((line + 63) // 64, rows), np.uint8)
    t_shape, t_strides, t_off = touch.shape, (64, r.step * line), r.start * line
    v_shape, v_strides = (use, 2, rows, cols), (1, pairs.step * c, r.step * line, r.step * c)
    v_off = r.start * line + pairs.start * c
    for i, x in enumerate(frames):
        if x.flags.c_contiguous:
            np.copyto(touch, np.ndarray(t_shape, np.uint8, x, t_off, t_strides))
            buf[:, :, i] = np.ndarray(v_shape, np.uint8, x, v_off, v_strides)
            continue
        v = x[r, pairs]                              # (rows, 2 cols[, c])
        if x.ndim == 2:
            buf[0, :, i] = v.reshape(rows, cols, 2).transpose(2, 0, 1)
        else:
            buf[:, :, i] = v.reshape(rows, cols, 2, x.shape[2])[..., :use].transpose(3, 2, 0, 1)


def _changed(small: np.ndarray, ref: np.ndarray, pixel_threshold: float) -> np.ndarray:
    return np.abs(small - ref[None]) > pixel_threshold


def pixel_fraction(small: np.ndarray, ref: np.ndarray, pixel_threshold: float) -> np.ndarray:
    """Fraction of pixels whose gray level moved by more than ``pixel_threshold``."""
    n, size = len(small), ref.size
    d = np.subtract(small, ref)
    np.abs(d, out=d)
    changed = np.greater(d, pixel_threshold)
    if n == 1:
        return np.array([np.count_nonzero(changed) / size])
    # a row sum of the bytes (0/1) of the bool mask: several times faster than summing the bools themselves
    return np.add.reduce(changed.reshape(n, size).view(np.uint8), axis=1, dtype=np.int64) / size


def block_fraction(small: np.ndarray, ref: np.ndarray, pixel_threshold: float,
                   blocks: int = 8, block_min: float = 0.05) -> np.ndarray:
    """Fraction of the ``blocks x blocks`` grid cells in which more than ``block_min`` of the pixels changed.

    This is the "area" feature: one person crossing changes a few blocks strongly, sensor noise changes
    many pixels weakly; counting blocks ignores the noise and scales with the moving area.
    """
    ch = _changed(small, ref, pixel_threshold)
    n, h, w = ch.shape
    by, bx = min(blocks, h), min(blocks, w)
    # cell edges (uneven cells when h, w are not multiples of blocks): reduceat sums each cell
    ys = (np.arange(by) * h) // by
    xs = (np.arange(bx) * w) // bx
    sums = np.add.reduceat(np.add.reduceat(ch.astype(np.float32), ys, axis=1), xs, axis=2)
    sizes = np.outer(np.diff(np.append(ys, h)), np.diff(np.append(xs, w))).astype(np.float32)
    return ((sums / sizes[None]) > block_min).mean(axis=(1, 2))


def histograms(small: np.ndarray, bins: int = 32, vmax: float = 256.0) -> np.ndarray:
    """Normalised gray-level histograms, (n, bins), one bincount for the whole stack."""
    n = small.shape[0]
    idx = np.clip((small.reshape(n, -1) * (bins / vmax)).astype(np.int64), 0, bins - 1)
    idx += (np.arange(n) * bins)[:, None]
    h = np.bincount(idx.ravel(), minlength=n * bins).reshape(n, bins).astype(np.float64)
    return h / np.maximum(h.sum(axis=1, keepdims=True), 1.0)


def histogram_distance(small: np.ndarray, ref: np.ndarray, bins: int = 32, vmax: float = 256.0) -> np.ndarray:
    """Total-variation distance (half the L1 distance) between gray-level histograms, in [0, 1]."""
    h = histograms(small, bins, vmax)
    r = histograms(ref[None], bins, vmax)[0]
    return 0.5 * np.abs(h - r[None]).sum(axis=1)


def vector_norm(values: np.ndarray, ref: np.ndarray, ord: float = 2, relative: bool = True) -> np.ndarray:
    """Norm of the difference of numeric vectors ``(n, d)`` from ``ref`` ``(d,)``; relative to ``|ref|`` if asked.

    >>> vector_norm(np.array([[1.0, 2.0], [1.0, 2.2]]), np.array([1.0, 2.0]), relative=False).round(3).tolist()
    [0.0, 0.2]
    """
    v = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    r = np.asarray(ref, dtype=np.float64).ravel()
    d = np.linalg.norm(v - r[None], ord=ord, axis=1)
    if relative:
        d = d / max(float(np.linalg.norm(r, ord=ord)), 1e-12)
    return d


def distance(feature: str, small: np.ndarray, ref: np.ndarray, *, pixel_threshold: float = 25.0,
             blocks: int = 8, block_min: float = 0.05, bins: int = 32, ord: float = 2,
             relative: bool = True) -> np.ndarray:
    """Dispatch on ``feature`` (one of :data:`FEATURES`)."""
    if feature == "pixel":
        return pixel_fraction(small, ref, pixel_threshold)
    if feature == "block":
        return block_fraction(small, ref, pixel_threshold, blocks, block_min)
    if feature == "histogram":
        return histogram_distance(small, ref, bins)
    if feature == "vector_norm":
        return vector_norm(small, ref, ord, relative)
    raise ValueError(f"unknown feature {feature!r}; expected one of {FEATURES}")


def default_feature(x: np.ndarray, size: tuple[int, int] = (12, 16), dim: int = 192) -> np.ndarray:
    """A compact feature: a gray ``size`` thumbnail of an image (2-D, HWC or NCHW with one image), else
    ``dim`` bins of the flattened values."""
    a = np.asarray(x)
    if a.ndim == 4 and a.shape[0] == 1 and a.shape[1] in (1, 3):      # NCHW tensor
        a = a[0]
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[2] not in (1, 3, 4):  # CHW
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (1, 3, 4)):
        g = grayscale(a[None])[0]
        h, w = g.shape
        ys = (np.arange(size[0]) * h) // size[0]
        xs = (np.arange(size[1]) * w) // size[1]
        s = np.add.reduceat(np.add.reduceat(g, ys, axis=0), xs, axis=1)
        cnt = np.outer(np.diff(np.append(ys, h)), np.diff(np.append(xs, w)))
        return (s / cnt).ravel().astype(np.float32)
    v = a.astype(np.float32).ravel()
    if v.size < dim:
        v = np.pad(v, (0, dim - v.size))
    edges = (np.arange(dim) * v.size) // dim
    return (np.add.reduceat(v, edges) / np.diff(np.append(edges, v.size))).astype(np.float32)
