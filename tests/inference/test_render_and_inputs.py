"""Rendering (per-limb colours, person threshold, boxes and track labels; the renderer itself: tests/test_drawing.py)
and in-memory image inputs (grayscale, RGBA, 16-bit, float, BGR)."""
from __future__ import annotations

import numpy as np
import pytest

from regpose.data.keypoints import get_meta
from regpose.errors import InputError
from regpose.inference.predictor import as_rgb_image
from regpose.drawing import draw_poses, limb_colors
from regpose.structures import PoseResult

META = get_meta("coco")


def _person(conf, dx=0.0):
    """A 17-keypoint person on a 200x200 canvas with keypoint confidences ``conf``."""
    xy = np.random.default_rng(3).uniform(30, 170, (17, 2)) + [dx, 0.0]
    return np.concatenate([xy, np.broadcast_to(np.asarray(conf, float), (17,))[:, None]], 1)


def _draw(result, skeleton=META.skeleton, **kw):
    img = np.full((200, 200, 3), 0, np.uint8)
    return img, draw_poses(img, result, skeleton, META.left_ids, META.right_ids, show_boxes=False,
                           show_scores=False, **kw)


def test_limb_colours_distinguish_sides_and_limbs():
    colors = limb_colors(META.skeleton, META.left_ids, META.right_ids)
    assert len(set(colors)) == len(META.skeleton)      # one colour per limb
    left = [c for (a, b), c in zip(META.skeleton, colors) if {a, b} <= set(META.left_ids)]
    right = [c for (a, b), c in zip(META.skeleton, colors) if {a, b} <= set(META.right_ids)]
    assert min(c[1] for c in left) > max(c[1] for c in right)     # left greens vs right reds / oranges


def test_thresholds_boxes_and_track_labels():
    kp = np.stack([_person(1.0), _person(1.0, dx=-30)])
    boxes = np.array([[20, 20, 180, 180], [5, 10, 150, 190]], np.float32)
    res = PoseResult(boxes, kp, [0.9, 0.2], {"track_id": np.array([7, 8])})
    img, only_first = _draw(res, score_threshold=0.5)
    _, both = _draw(res, score_threshold=0.0)
    p = kp[1, 0]
    assert only_first[int(p[1]), int(p[0])].sum() == 0 and both[int(p[1]), int(p[0])].sum() > 0
    framed = draw_poses(img, res, META.skeleton, show_boxes=True, show_scores=True)
    unframed = draw_poses(img, res, META.skeleton, show_boxes=False, show_scores=True)
    edge = framed[30:170, 20].astype(int) - unframed[30:170, 20]
    assert (edge.sum(1) > 0).mean() > 0.9              # the box's left edge at x = 20
    plain = draw_poses(img, res.select([0]), META.skeleton, show_boxes=False, show_scores=False)
    assert framed[15:25, 20:60].sum() > plain[15:25, 20:60].sum()  # label "#7 0.90" above the box


def test_in_memory_images_of_every_kind():
    rgb = np.random.default_rng(0).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    gray = rgb[..., 0]
    np.testing.assert_array_equal(as_rgb_image(gray), np.repeat(gray[..., None], 3, 2))
    np.testing.assert_array_equal(as_rgb_image(gray[..., None]), np.repeat(gray[..., None], 3, 2))
    np.testing.assert_array_equal(as_rgb_image(np.dstack([rgb, np.zeros((6, 7), np.uint8)])), rgb)
    np.testing.assert_array_equal(as_rgb_image(rgb.astype(np.uint16) * 257), rgb)
    np.testing.assert_array_equal(as_rgb_image(rgb / 255.0), rgb)
    np.testing.assert_array_equal(as_rgb_image(rgb[..., ::-1], "bgr"), rgb)
    for bad in (np.zeros((4, 4, 2), np.uint8), np.zeros((0, 3, 3), np.uint8), np.zeros(5, np.uint8)):
        with pytest.raises(InputError, match="expected an"):
            as_rgb_image(bad)


def _synthetic_cfg(method, *overrides):
    from regpose.config import load_config
    from regpose.demo import SYNTHETIC_CONFIGS, configs_dir
    return load_config(configs_dir() / SYNTHETIC_CONFIGS[method], list(overrides))


def test_display_defaults_follow_what_each_methods_scores_mean():
    from regpose.inference.visualize import SOLID_SIGMA, Renderer, display_defaults

    assert SOLID_SIGMA == 0.25                                 # the hand-computed values below assume it
    # Poseur, flip test with type2 fusion: Eq. 8 x 0.7 at sigma 0.25 = 0.7 (1 - e^-0.8)^2; rescored box + mean + max
    d = display_defaults(_synthetic_cfg("poseur"))
    assert d.kpt_threshold == pytest.approx(0.7 * (1 - np.exp(-0.8)) ** 2, abs=1e-3) and d.score_max == pytest.approx(2.4)
    d = display_defaults(_synthetic_cfg("poseur", "test.flip=false"))           # mean(1 - sigma)
    assert d.kpt_threshold == pytest.approx(0.75) and d.score_max == pytest.approx(3.0)
    d = display_defaults(_synthetic_cfg("poseur", "test.flip=false", "model.keypoint_score=none",
                                        "model.rescore=false"))
    assert d.kpt_threshold == 1.0 and d.score_max is None    # constant scores 1: every joint solid
    assert display_defaults(_synthetic_cfg("querypose")).kpt_threshold == pytest.approx(0.75)
    assert display_defaults(_synthetic_cfg("dekr")).kpt_threshold == 0.15
    assert display_defaults(_synthetic_cfg("directpose")).kpt_threshold == 0.3
    assert display_defaults(_synthetic_cfg("tfpose")).kpt_threshold <= 1.0     # its keypoint scores are all 1
    # the Predictor's renderer carries them; a per-call option (e.g. --kpt-thr) overrides, None keeps the default
    renderer = Renderer.for_config(_synthetic_cfg("poseur"))
    kp = _person(0.15)
    res = PoseResult(np.array([[20, 20, 180, 180]]), kp[None], [1.16])
    img = np.zeros((200, 200, 3), np.uint8)
    default, faded, solid = (renderer(img, res, kpt_threshold=t) for t in (None, 0.212, 0.1))
    np.testing.assert_array_equal(default, faded)
    assert not np.array_equal(default, solid)
