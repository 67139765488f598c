"""Rendering (per-limb colours, keypoints faded by confidence, thresholds, boxes) and in-memory image inputs
(grayscale, RGBA, 16-bit, float, BGR)."""
from __future__ import annotations

import numpy as np
import pytest

from regpose.data.keypoints import get_meta
from regpose.errors import InputError
from regpose.inference.predictor import as_rgb_image
from regpose.inference.visualize import draw_poses, limb_colors
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


def test_keypoints_fade_with_confidence():
    conf = np.full(17, 1.0)
    conf[3], conf[4] = 0.3, 0.01                        # faint, and below the default threshold 0.05
    kp = _person(conf)
    img, out = _draw(PoseResult(np.zeros((1, 4)), kp[None], [1.0]), skeleton=(), radius=4)   # keypoints only
    at = lambda k: out[int(round(kp[k, 1])), int(round(kp[k, 0]))].astype(int)  # noqa: E731
    assert at(0).sum() > 250                           # full-confidence keypoint: full colour
    assert 0 < at(3).sum() < 0.5 * at(0).sum()         # 0.3: a faint version of the same kind of colour
    assert at(4).sum() == 0                            # hidden
    _, limbs = _draw(PoseResult(np.zeros((1, 4)), kp[None], [1.0]), radius=4)
    mid = (kp[5, :2] + kp[11, :2]) / 2                 # on the left torso limb (5, 11), away from every keypoint
    assert np.linalg.norm(kp[:, :2] - mid, axis=1).min() > 8
    assert limbs[int(round(mid[1])), int(round(mid[0]))].sum() > 0 == out[int(round(mid[1])), int(round(mid[0]))].sum()


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
    np.testing.assert_array_equal(as_rgb_image(rgb[..., ::-1], bgr=True), rgb)
    for bad in (np.zeros((4, 4, 2), np.uint8), np.zeros((0, 3, 3), np.uint8), np.zeros(5, np.uint8)):
        with pytest.raises(InputError, match="expected an"):
            as_rgb_image(bad)
