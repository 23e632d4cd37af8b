"""Training and evaluation scenes for the example camera model (used by ``train_camera_counter.py``).

One real video, made into many cameras, and a held-out part that no training sample touches:

* :func:`teacher` labels the real frames by background subtraction (person-sized blobs, their
  centroids, the foreground mask);
* :class:`Scenes` cuts the video at a column: training samples come only from the *left* part
  (random 4:3 crops at many scales, brightness/contrast/noise/blur jitter, mirrored), and synthetic
  frames composite person sprites cut from the left part onto backgrounds (crops of the empty scene,
  remixes of it, or generated textures and street-like clutter) with exact counts. The *right* part (its crops, its sprites) and one family
  of generated backgrounds (stripes and tiles) are kept for evaluation only.

Every model input is made by :func:`pipeline.inference.preprocess.frames_to_tensor` with the onnx
stage's defaults for this model (gray, true area resize to 128x96, scale 1/255, NCHW), so training,
serving and the benchmark see the same tensors.
"""
from __future__ import annotations

import numpy as np

from pipeline.inference.preprocess import frames_to_tensor

H, W = 96, 128                # model input (rows, cols)
GRID = (6, 8)                 # occupancy grid (rows, cols)
MIN_AREA, MIN_HEIGHT = 600, 30  # teacher's person-sized blob, in full-resolution pixels
MASK_STEP = 4                 # foreground masks are kept at 1/4 resolution


def model_input(frames: list[np.ndarray]) -> np.ndarray:
    """Gray uint8 frames (any sizes) -> (n, 1, 96, 128) float32, exactly as the onnx stage builds it."""
    return frames_to_tensor(frames, height=H, width=W, color="gray", order="bgr", resize="area",
                            scale=1 / 255, mean=None, std=None, layout="NCHW", dtype=np.float32)


def teacher(frames: np.ndarray):
    """Per frame: person blobs (x, y, w, h, cx, cy) and the foreground mask (1/4 resolution, bool)."""
    import cv2

    bg = cv2.GaussianBlur(np.median(frames[::3], axis=0).astype(np.uint8), (5, 5), 0)
    opener = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    grower = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 15))
    blobs, masks, tight = [], [], []
    for gray in frames:
        diff = cv2.absdiff(cv2.GaussianBlur(gray, (5, 5), 0), bg)
        opened = cv2.morphologyEx((diff > 30).astype(np.uint8) * 255, cv2.MORPH_OPEN, opener)
        mask = cv2.dilate(opened, grower)
        _, _, stats, centroids = cv2.connectedComponentsWithStats(mask)
        person = (stats[1:, cv2.CC_STAT_AREA] >= MIN_AREA) & (stats[1:, cv2.CC_STAT_HEIGHT] >= MIN_HEIGHT)
        blobs.append(np.hstack([stats[1:, :4], centroids[1:]])[person].astype(np.float32))
        masks.append(mask[::MASK_STEP, ::MASK_STEP] > 0)
        tight.append(cv2.dilate(opened, opener)[::2, ::2] > 0)     # alpha of the sprites, 1/2 resolution
    return blobs, np.stack(masks), tight, np.median(frames, axis=0).astype(np.uint8)


def targets(centres: np.ndarray, cover: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Count, occupancy grid (6, 8) and centroid density map (12, 16) for one model input.

    ``centres``: (k, 2) person centres as (x, y) in 0..1; ``cover``: a foreground mask of the input."""
    dens = np.zeros((H // 8, W // 8), np.float32)
    for x, y in centres:
        dens[min(int(y * dens.shape[0]), dens.shape[0] - 1), min(int(x * dens.shape[1]), dens.shape[1] - 1)] += 1
    gy = (np.arange(cover.shape[0]) * GRID[0]) // cover.shape[0]
    gx = (np.arange(cover.shape[1]) * GRID[1]) // cover.shape[1]
    grid = np.zeros(GRID, np.float32)
    np.add.at(grid, (gy[:, None], gx[None, :]), cover.astype(np.float32))
    grid /= np.bincount(gy)[:, None] * np.bincount(gx)[None, :]
    return float(len(centres)), grid, dens


def textures(rng, n: int, family: str) -> list[np.ndarray]:
    """Generated backgrounds (uint8, 288x384): ``smooth`` (blurred noise + gradient), ``blocks``
    (rectangles) and ``clutter`` (a street-like scene: ground planes, grass, buildings with windows,
    poles, lamps, signs, tripods, kerbs, cars: structure that is not people, much of it person-sized)
    for training, ``tiles`` (stripes, a tiled floor) held out."""
    import cv2

    out = []
    for _ in range(n):
        if family == "blocks":                       # structure that is not people: walls, benches, signs
            g = np.full((288, 384), rng.uniform(60, 180), np.float32)
            for _ in range(int(rng.integers(4, 14))):
                y, x = rng.integers(0, 288), rng.integers(0, 384)
                g[y:y + int(rng.integers(5, 120)), x:x + int(rng.integers(5, 160))] = rng.uniform(20, 235)
            g = cv2.GaussianBlur(g, (0, 0), rng.uniform(0.5, 2.0)) + rng.normal(0, 2, g.shape)
        elif family == "clutter":
            g = _clutter(rng)
        elif family == "smooth":
            g = cv2.resize(rng.normal(0, 1, (9, 12)).astype(np.float32), (384, 288), interpolation=cv2.INTER_CUBIC)
            g = g * rng.uniform(15, 45) + np.linspace(0, rng.uniform(-60, 60), 384)[None] + rng.uniform(70, 170)
            g += rng.normal(0, rng.uniform(1, 6), g.shape)
        else:
            yy, xx = np.mgrid[:288, :384]
            period = rng.uniform(18, 60)
            g = 110 + 40 * (((xx + 0.4 * yy) // period + yy // (period * 0.7)) % 2) + 25 * np.sin(yy / rng.uniform(5, 20))
            g += rng.normal(0, 3, g.shape) + rng.uniform(-40, 40)
        out.append(np.clip(g, 0, 255).astype(np.uint8))
    return out


class Scenes:
    """Crops and composites from one labelled video, split at column ``cut`` (see module docstring)."""

    def __init__(self, frames, blobs, masks, tight, background, cut: int, rng, sprite_px: int = 75,
                 props: float = 0.0):
        import cv2

        self.frames, self.blobs, self.masks, self.bg, self.cut, self.rng = frames, blobs, masks, background, cut, rng
        self.sprite_px = sprite_px           # tallest training sprite, in model-input pixels (<= 96)
        self.props = props                   # share of training composites with person-sized props (not people)
        self.sprites = {"train": [], "held": []}
        for i in range(0, len(frames), 3):                  # single-person-sized blobs, clear of the cut
            for x, y, w, h, _, _ in blobs[i].astype(int):
                if not (60 <= h <= 200 and 0.25 <= w / h <= 0.75 and y > 2 and x > 2 and x + w < frames.shape[2] - 2):
                    continue
                side = "train" if x + w < cut else ("held" if x > cut else None)
                if side is None:
                    continue
                a = tight[i][y // 2:(y + h) // 2, x // 2:(x + w) // 2].astype(np.float32)
                if a.mean() > 0.25:
                    a = cv2.GaussianBlur(cv2.erode(a, np.ones((3, 3), np.float32)), (3, 3), 0)  # less halo
                    self.sprites[side].append((frames[i][y:y + h:2, x:x + w:2][: a.shape[0], : a.shape[1]], a))

    def view(self, i: int, mirrored: bool = False):
        """Frame i, its blobs and mask; ``mirrored``: the training part with its own mirror image appended
        (a full-width view that shows nothing of the held-out part)."""
        img, b, m = self.frames[i], self.blobs[i], self.masks[i]
        if not mirrored:
            return img, b, m
        fw, cut, s = img.shape[1], self.cut, MASK_STEP
        extra = fw - cut
        img = np.hstack([img[:, :cut], img[:, cut - extra:cut][:, ::-1]])
        m = np.hstack([m[:, :cut // s], m[:, (cut - extra) // s:cut // s][:, ::-1]])
        keep = b[b[:, 4] < cut]
        flip = keep[keep[:, 4] >= cut - extra].copy()
        flip[:, 4] = 2 * cut - flip[:, 4]
        return img, np.vstack([keep, flip]), m

    def crop(self, view, x0: int, y0: int, cw: int, ch: int):
        """A view (frame, blobs, mask) cut to [y0:y0+ch, x0:x0+cw] with its teacher targets."""
        img, b, m = view
        inside = (b[:, 4] >= x0) & (b[:, 4] < x0 + cw) & (b[:, 5] >= y0) & (b[:, 5] < y0 + ch)
        centres = (b[inside, 4:6] - [x0, y0]) / [cw, ch]
        s = MASK_STEP
        return img[y0:y0 + ch, x0:x0 + cw], targets(centres, m[y0 // s:(y0 + ch) // s, x0 // s:(x0 + cw) // s])

    def random_crop(self, held: bool = False, width: tuple[float, float] = (0.35, 1.0)):
        """A 4:3 crop of a random frame inside the training part (a third of them of its full-width
        mirrored view, people as small as in the full frame), or inside the held-out part."""
        r, fh, fw = self.rng, self.frames.shape[1], self.frames.shape[2]
        wide = not held and r.random() < 0.33
        lo, hi = (self.cut, fw) if held else (0, fw if wide else self.cut)
        cw = int(min(hi - lo, fh * 4 / 3) * r.uniform(*width))
        ch = int(cw * 0.75)
        x0, y0 = int(r.integers(lo, hi - cw + 1)), int(r.integers(0, fh - ch + 1))
        return self.crop(self.view(int(r.integers(len(self.frames))), mirrored=wide), x0, y0, cw, ch)

    def empty_crop(self, held: bool = False, width: tuple[float, float] = (0.35, 1.0)):
        """A 4:3 crop of the empty scene (the median frame, count 0) inside the training or held-out part."""
        r, fh, fw = self.rng, self.frames.shape[1], self.frames.shape[2]
        lo, hi = (self.cut, fw) if held else (0, self.cut)
        cw = int(min(hi - lo, fh * 4 / 3) * r.uniform(*width))
        ch = int(cw * 0.75)
        x0, y0 = int(r.integers(lo, hi - cw + 1)), int(r.integers(0, fh - ch + 1))
        nobody = (self.bg, np.zeros((0, 6), np.float32), np.zeros_like(self.masks[0]))
        return self.crop(nobody, x0, y0, cw, ch)

    def remix(self) -> np.ndarray:
        """A new empty scene (288x384 float32) made from the training part's empty background: a
        perspective-warped crop with patches of it pasted elsewhere at other scales, some mirrored (real
        structure, new arrangements, no people)."""
        import cv2

        r = self.rng
        src = self.bg[:, :self.cut].astype(np.float32)
        sh, sw = src.shape
        cw = min(sw, sh * 4 / 3) * r.uniform(0.3, 1.0)
        ch = cw * 0.75
        x0, y0 = r.uniform(0, sw - cw), r.uniform(0, sh - ch)
        quad = np.float32([[x0, y0], [x0 + cw, y0], [x0 + cw, y0 + ch], [x0, y0 + ch]])
        quad += r.uniform(-0.15, 0.15, (4, 2)).astype(np.float32) * np.float32([cw, ch])
        warp = cv2.getPerspectiveTransform(quad, np.float32([[0, 0], [384, 0], [384, 288], [0, 288]]))
        g = cv2.warpPerspective(src, warp, (384, 288), borderMode=cv2.BORDER_REFLECT)
        for _ in range(int(r.integers(2, 9))):
            pw, ph = int(r.integers(20, 200)), int(r.integers(20, 150))
            px, py = int(r.integers(0, sw - pw)), int(r.integers(0, sh - ph))
            scale = r.uniform(0.5, 2.0)
            patch = _fit(src[py:py + ph, px:px + pw], min(288, int(ph * scale)), min(384, int(pw * scale)))
            if r.random() < 0.5:
                patch = patch[:, ::-1]
            ty, tx = int(r.integers(0, 289 - patch.shape[0])), int(r.integers(0, 385 - patch.shape[1]))
            g[ty:ty + patch.shape[0], tx:tx + patch.shape[1]] = patch
        return g

    def composite(self, held: bool = False, max_people: int = 12, scene: bool = False):
        """0..``max_people`` person sprites (30% of the frames empty, 22% held out) pasted onto a background at 2x the
        model input (exact count). ``scene`` (with ``held``): the held-out part's own empty scene as the
        background and its sprites up to the largest training size (another camera, exact counts)."""
        r = self.rng
        pick = r.random()
        if held and scene:
            fw = self.bg.shape[1]
            cw = int(min(fw - self.cut, self.bg.shape[0] * 4 / 3) * r.uniform(0.5, 1.0))
            x0, y0 = int(r.integers(self.cut, fw - cw + 1)), int(r.integers(0, self.bg.shape[0] - int(cw * 0.75) + 1))
            canvas = self.bg[y0:y0 + int(cw * 0.75), x0:x0 + cw].astype(np.float32)
        elif held:
            canvas = textures(r, 1, "tiles")[0].astype(np.float32)
        elif pick < 0.25:
            cw = int(self.cut * r.uniform(0.4, 1.0))
            x0, y0 = int(r.integers(0, self.cut - cw + 1)), int(r.integers(0, self.bg.shape[0] - int(cw * 0.75) + 1))
            canvas = self.bg[y0:y0 + int(cw * 0.75), x0:x0 + cw].astype(np.float32)
        elif pick < 0.5:
            canvas = self.remix()
        else:
            family = "smooth" if pick < 0.6 else "blocks" if pick < 0.75 else "clutter"
            canvas = textures(r, 1, family)[0].astype(np.float32)
        canvas = _fit(canvas, 2 * H, 2 * W)
        if not held and self.props and r.random() < self.props:   # no draw without props: v4's stream
            _props(canvas, r, int(r.integers(1, 6)))
        cover = np.zeros(canvas.shape, bool)
        pool = self.sprites["held" if held else "train"]
        # many empty and quiet frames, a few crowded; the held-out set keeps the v3 model's draw
        k = min(max_people, int(r.geometric(0.22 if held else 0.3)) - 1)
        centres = []
        for _ in range(k):
            patch, alpha = pool[int(r.integers(len(pool)))]
            height = int(r.uniform(16, 100 if held and not scene else 2 * self.sprite_px))  # 8..50 px (held) or 8..sprite_px
            width = max(2, int(round(patch.shape[1] * height / patch.shape[0])))
            p, a = _fit(patch.astype(np.float32), height, width), _fit(alpha, height, width)
            if r.random() < 0.5:
                p, a = p[:, ::-1], a[:, ::-1]
            y, x = int(r.integers(0, 2 * H - height + 1)), int(r.integers(0, 2 * W - width + 1))
            p = p * r.uniform(0.7, 1.3) + r.uniform(-30, 30)
            region = canvas[y:y + height, x:x + width]
            region[:] = region * (1 - a) + p * a
            cover[y:y + height, x:x + width] |= a > 0.5
            centres.append(((x + width / 2) / (2 * W), (y + height / 2) / (2 * H)))
        img = np.clip(canvas, 0, 255).astype(np.uint8)
        return img, targets(np.array(centres).reshape(-1, 2), cover)


def _clutter(rng) -> np.ndarray:
    """A street-like scene without people (288x384, float32): see :func:`textures`."""
    import cv2

    g = np.empty((288, 384), np.float32)
    edges = np.sort(rng.integers(0, 288, int(rng.integers(1, 4))))
    for top, bottom in zip(np.r_[0, edges], np.r_[edges, 288]):      # sky / building / road / grass bands
        g[top:bottom] = rng.uniform(30, 220) + np.linspace(0, rng.uniform(-40, 40), 384)[None]
    grass = cv2.GaussianBlur(rng.normal(0, 1, g.shape).astype(np.float32), (0, 0), rng.uniform(0.5, 2))
    g += grass * rng.uniform(0, 25)

    def shade():
        return float(rng.uniform(10, 245))

    for _ in range(int(rng.integers(6, 30))):
        kind = rng.random()
        x, y = int(rng.integers(0, 384)), int(rng.integers(0, 288))
        if kind < 0.2:                                               # building / car / sign, maybe windows
            w, h = int(rng.integers(10, 200)), int(rng.integers(8, 140))
            cv2.rectangle(g, (x, y), (x + w, y + h), shade(), -1)
            if rng.random() < 0.5:
                step = int(rng.integers(8, 30))
                for wy in range(y + 3, y + h - 6, step):
                    for wx in range(x + 3, x + w - 6, step):
                        cv2.rectangle(g, (wx, wy), (wx + step // 2, wy + step // 2), shade(), -1)
        elif kind < 0.45:                                            # pole, maybe a lamp or a sign on top
            length, thick = int(rng.integers(20, 250)), int(rng.integers(1, 7))
            cv2.line(g, (x, y), (x + int(rng.integers(-4, 5)), y + length), shade(), thick)
            if rng.random() < 0.5:
                cv2.rectangle(g, (x - int(rng.integers(3, 15)), y), (x + int(rng.integers(3, 15)),
                              y + int(rng.integers(4, 30))), shade(), -1)
        elif kind < 0.55:                                            # tripod / bench legs
            h = int(rng.integers(20, 120))
            for dx in rng.integers(-h // 3, h // 3 + 1, 3):
                cv2.line(g, (x, y), (x + int(dx), y + h), shade(), int(rng.integers(1, 3)))
        elif kind < 0.75:                                            # kerb, road marking, cable
            cv2.line(g, (x, y), (int(rng.integers(0, 384)), int(rng.integers(0, 288))), shade(), int(rng.integers(1, 6)))
        else:                                                        # bush, bin, wheel, bollard
            axes = (int(rng.integers(3, 50)), int(rng.integers(3, 50)))
            cv2.ellipse(g, (x, y), axes, float(rng.uniform(0, 180)), 0, 360, shade(), -1)
    return cv2.GaussianBlur(g, (0, 0), rng.uniform(0.4, 1.5)) + rng.normal(0, rng.uniform(1, 5), g.shape)


def _props(g: np.ndarray, rng, n: int) -> None:
    """Draw ``n`` person-sized things that are not people onto ``g`` (in place): tripods with a head,
    cones, poles with a sign at head height, bins and bollards, standing boxes."""
    import cv2

    gh, gw = g.shape
    for _ in range(n):
        kind, h = rng.random(), int(rng.uniform(20, 0.95 * gh))
        x, y = int(rng.integers(0, gw)), int(rng.integers(-h // 4, gh - h // 2))
        dark = float(rng.uniform(5, 90)) if rng.random() < 0.7 else float(rng.uniform(150, 250))
        if kind < 0.35:                                              # tripod with a camera/light on top
            legs = int(rng.integers(2, 4))
            for dx in rng.uniform(-0.35, 0.35, legs) * h:
                cv2.line(g, (x, y), (x + int(dx), y + h), dark, int(rng.integers(1, 4)))
            hw, hh = int(rng.integers(2, 8)), int(rng.integers(3, 12))
            cv2.rectangle(g, (x - hw, y - hh), (x + hw, y), dark, -1)
        elif kind < 0.55:                                            # cone, maybe a bright band
            w = max(3, int(h * rng.uniform(0.2, 0.5) / 2))
            hh = max(6, h // 3)
            cv2.fillPoly(g, [np.int32([[x, y], [x - w, y + hh], [x + w, y + hh]])], dark)
            if rng.random() < 0.5:
                cv2.line(g, (x - w // 2, y + hh // 2), (x + w // 2, y + hh // 2), 255 - dark, max(1, hh // 6))
        elif kind < 0.75:                                            # pole with a sign at head height
            cv2.line(g, (x, y), (x, y + h), dark, int(rng.integers(1, 5)))
            sw, sh = int(rng.integers(4, 20)), int(rng.integers(4, 24))
            sy = y + int(rng.uniform(0, 0.4) * h)
            cv2.rectangle(g, (x - sw, sy), (x + sw, sy + sh), float(rng.uniform(5, 250)), -1)
        else:                                                        # bin, bollard, box, sack
            w, hh = int(h * rng.uniform(0.2, 0.6)), max(6, int(h * rng.uniform(0.2, 0.6)))
            if rng.random() < 0.5:
                cv2.rectangle(g, (x, y), (x + w, y + hh), dark, -1)
            else:
                cv2.ellipse(g, (x, y), (max(2, w // 2), max(3, hh // 2)), 0, 0, 360, dark, -1)


def _fit(img: np.ndarray, h: int, w: int) -> np.ndarray:
    import cv2

    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if h < img.shape[0] else cv2.INTER_LINEAR)


def jitter(img: np.ndarray, rng) -> np.ndarray:
    """Exposure, contrast, sensor noise and blur: the same scene as another camera would see it."""
    import cv2

    x = img.astype(np.float32)
    mean = x.mean()
    x = (x - mean) * rng.uniform(0.6, 1.4) + mean * rng.uniform(0.5, 1.5)
    if rng.random() < 0.3:
        x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.5, 1.5))
    x += rng.normal(0, rng.uniform(0, 6), x.shape)
    return np.clip(x, 0, 255).astype(np.uint8)
