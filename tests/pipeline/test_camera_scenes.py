"""The training scenes of the example camera model (examples/models/camera_scenes.py) on a small generated video."""

import sys

import numpy as np
import pytest

from tests.support.cli import ROOT

cv2 = pytest.importorskip("cv2")
sys.path.insert(0, str(ROOT / "examples" / "models"))
import camera_scenes  # noqa: E402

CUT = 460


@pytest.fixture(scope="module")
def scenes():
    """40 frames of a textured square, darker left of the cut (90..160) than right of it (170..230), with one
    dark 'person' walking on each side."""
    rng = np.random.default_rng(0)
    base = np.hstack([cv2.GaussianBlur(rng.integers(lo, hi, (576, w)).astype(np.uint8), (0, 0), 3)
                      for lo, hi, w in ((90, 160, CUT), (170, 230, 768 - CUT))])
    frames = []
    for i in range(40):
        f = base.copy()
        for x in (40 + 5 * i, 560 + 3 * i):
            f[300:390, x:x + 30] = 20
        frames.append(f)
    frames = np.stack(frames)
    blobs, masks, tight, background = camera_scenes.teacher(frames)
    return camera_scenes.Scenes(frames, blobs, masks, tight, background, CUT, np.random.default_rng(1))


def test_sprites_come_from_their_own_side_of_the_cut(scenes):
    assert scenes.sprites["train"] and scenes.sprites["held"]
    assert all(a.max() <= 1 and a.min() >= 0 for _, a in scenes.sprites["train"] + scenes.sprites["held"])


@pytest.mark.parametrize("held", [False, True])
def test_composites_count_exactly_what_they_paste(scenes, held):
    for _ in range(40):
        img, (count, grid, density) = scenes.composite(held=held)
        assert img.shape == (2 * camera_scenes.H, 2 * camera_scenes.W) and img.dtype == np.uint8
        assert 0 <= count <= 12 and density.sum() == count and grid.shape == camera_scenes.GRID
        assert (count == 0) == (grid.max() == 0)


def test_empty_scene_remix_and_generated_backgrounds_hold_nobody(scenes):
    for held in (False, True):
        img, (count, grid, density) = scenes.empty_crop(held=held)
        assert count == 0 and grid.max() == 0 and abs(img.shape[1] * 0.75 - img.shape[0]) <= 1
    remix = scenes.remix()
    assert remix.shape == (288, 384) and np.isfinite(remix).all()
    rng = np.random.default_rng(2)
    for family in ("smooth", "blocks", "clutter", "tiles"):
        out = camera_scenes.textures(rng, 2, family)
        assert all(t.shape == (288, 384) and t.dtype == np.uint8 for t in out)
        assert all(t.std() > 1 for t in out)                 # structure, not a flat field


def test_training_crops_never_show_the_held_out_part_and_held_out_crops_show_only_it(scenes):
    for _ in range(30):
        train, _ = scenes.random_crop()
        held, _ = scenes.random_crop(held=True, width=(0.5, 1.0))
        assert train.max() < 165                               # nothing of the brighter right part
        assert ((held > 165) | (held < 60)).all()             # right part's background or its person
    for _ in range(30):
        assert scenes.remix().max() < 165 and scenes.empty_crop()[0].max() < 165



class MiddleRng:
    """Stands in for a numpy Generator: every draw is the middle of its range (the same path whatever was
    drawn before) and is counted."""

    def __init__(self):
        self.draws = 0

    def _full(self, value, size):
        self.draws += 1
        return value if size is None else np.full(size, value)

    def random(self, size=None):
        return self._full(0.5, size)

    def uniform(self, low=0.0, high=1.0, size=None):
        return self._full((low + high) / 2, size)

    def normal(self, loc=0.0, scale=1.0, size=None):
        return self._full(loc, size)

    def integers(self, low, high=None, size=None):
        low, high = (0, low) if high is None else (low, high)
        return self._full((low + high - 1) // 2, size)

    def geometric(self, p, size=None):
        return self._full(2, size)


def test_composites_without_props_draw_nothing_for_props(scenes, monkeypatch):
    """At ``props=0`` (recipe v4) a composite takes no random number for props, so recipe v4 draws v4's
    stream and rebuilds its weights; with props on (drawn as nothing here) each composite takes two more."""
    monkeypatch.setattr(camera_scenes, "_props", lambda g, rng, n: None)
    monkeypatch.setattr(scenes, "rng", None)
    draws = {}
    for props in (0.0, 1.0):
        monkeypatch.setattr(scenes, "props", props)
        scenes.rng = MiddleRng()
        scenes.composite()
        draws[props] = scenes.rng.draws
    assert draws[1.0] == draws[0.0] + 2
