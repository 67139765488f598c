"""The shared pose renderer: solid joints above the threshold in full colour, faded rings and dashed limbs below it
(never absent), sizes that follow the person and the canvas, scores written with their range, robust to points off
the canvas, and an empty result leaves the picture unchanged."""
from __future__ import annotations

import numpy as np
import pytest

from regpose.data.keypoints import get_meta
from regpose.drawing import FADED_ALPHA, draw_poses, format_score, keypoint_colors, limb_colors
from regpose.structures import PoseResult

META = get_meta("coco")
GREY = 100


def _canvas(h=200, w=200):
    return np.full((h, w, 3), GREY, np.uint8)


def _one_person(points: dict[int, tuple[float, float, float]], box=(0, 0, 0, 0), score=1.0) -> PoseResult:
    """A COCO person whose keypoints are given as {index: (x, y, confidence)}; the others are not drawn (NaN)."""
    kp = np.full((1, 17, 3), np.nan)
    for j, v in points.items():
        kp[0, j] = v
    return PoseResult(np.asarray([box], float), kp, [score])


def _draw(result, img=None, **kw):
    img = _canvas() if img is None else img
    kw = {"kpt_threshold": 0.5, "show_boxes": False, "show_scores": False, **kw}
    return img, draw_poses(img, result, META.skeleton, META.left_ids, META.right_ids, **kw)


def _changed(a, b):
    return (a.astype(int) != b.astype(int)).any(-1)


def test_keypoint_above_threshold_is_solid_in_full_colour():
    nose, left_wrist = 0, 9
    res = _one_person({nose: (50.0, 50.0, 0.9), left_wrist: (150.0, 150.0, 0.9)})
    _, out = _draw(res, radius=5)
    colors = keypoint_colors(17, META.left_ids, META.right_ids)
    assert tuple(out[50, 50]) == colors[nose]                     # the dot's centre: exactly the keypoint colour
    assert tuple(out[150, 150]) == colors[left_wrist]
    assert colors[nose] != colors[left_wrist]                      # centre vs left side


def test_keypoint_below_threshold_is_a_faded_ring_not_absent():
    res = _one_person({0: (100.0, 100.0, 0.2)})
    img, out = _draw(res, radius=6)
    color = np.array(keypoint_colors(17)[0], float)
    assert tuple(out[100, 100]) == (GREY,) * 3                     # hollow
    ring = out[100, 106].astype(float)                             # on the ring, radius 6 to the right
    expected = GREY + FADED_ALPHA * (color - GREY)                 # the faded blend of the colour over the picture
    assert np.abs(ring - expected).max() <= 0.35 * np.abs(color - GREY).max()
    assert np.abs(ring - color).max() > 20                         # not full colour
    assert _changed(img, out).sum() > 20


def test_solid_limb_is_continuous_and_faded_limb_is_dashed():
    ls, le = META.index("left_shoulder"), META.index("left_elbow")
    line = [(x, 100) for x in range(60, 141)]                      # shoulder (40, 100) -> elbow (160, 100)
    solid = _one_person({ls: (40.0, 100.0, 0.9), le: (160.0, 100.0, 0.9)})
    img, out = _draw(solid, radius=3, thickness=2)
    assert all(_changed(img, out)[y, x] for x, y in line)
    limb = np.array(limb_colors(META.skeleton, META.left_ids, META.right_ids)[META.skeleton.index((5, 7))])
    assert np.abs(out[100, 100].astype(int) - limb).max() <= 2     # full limb colour mid-way
    faded = _one_person({ls: (40.0, 100.0, 0.9), le: (160.0, 100.0, 0.1)})   # one end uncertain: dashed
    _, out = _draw(faded, radius=3, thickness=2)
    on = np.array([_changed(img, out)[y, x] for x, y in line])
    assert 0.3 < on.mean() < 0.8                                   # dashes and gaps
    assert np.abs(out[100, 60:141].astype(int) - limb).max(-1).min() > 10   # faded everywhere along it


def test_radius_follows_person_size_and_canvas():
    def dot_extent(box, canvas):
        """How far from the keypoint the drawing reaches: radius + 1 (dark rim) + anti-aliasing."""
        c = np.array([canvas[1] / 2, canvas[0] / 2])
        img, out = _draw(_one_person({0: (*c, 0.9)}, box=box), img=_canvas(*canvas))
        ys, xs = np.nonzero(_changed(img, out))
        return np.hypot(xs - c[0], ys - c[1]).max()

    # radius 0.03 x sqrt(box area): 0.03 x 200 = 6 px, 0.03 x 50 = 1.5 px
    assert 6.5 <= dot_extent((0, 0, 200, 200), (400, 400)) <= 8.5
    assert dot_extent((0, 0, 50, 50), (400, 400)) <= 4.5
    # a person of size sqrt(300 x 400) = 346 px: radius 10 (0.03 x 346, at most 400 / 40) on a 400x400 canvas, but
    # at most 72 / 40 = 1.8 px on a 72x96 training crop
    assert 10.5 <= dot_extent((0, 0, 300, 400), (400, 400)) <= 12.5
    assert dot_extent((0, 0, 300, 400), (96, 72)) <= 4.5


def test_scores_above_one_are_written_with_their_range():
    assert format_score(1.164, 3.0) == "1.16/3"
    assert format_score(1.164, 2.4) == "1.16/2.4"
    assert format_score(0.873) == "0.87" == format_score(0.873, 1.0)
    res = _one_person({0: (100.0, 100.0, 0.9)}, box=(40, 60, 160, 190), score=1.164)
    img, bare = _draw(res, show_scores=True)
    _, ranged = _draw(res, show_scores=True, score_max=3.0)
    label_row = slice(40, 60)
    assert _changed(img, ranged)[label_row].sum() > _changed(img, bare)[label_row].sum() > 0


def test_points_off_the_canvas_do_not_crash_and_the_visible_part_is_drawn():
    ls, le, lw = 5, 7, 9
    res = _one_person({ls: (100.0, 100.0, 0.9), le: (1e12, 100.0, 0.9), lw: (-np.inf, 5.0, 0.9),
                       0: (np.nan, 3.0, 0.9), 1: (-1e9, -1e9, 0.1)}, box=(-1e12, -5, 1e12, 1e9))
    img, out = _draw(res, show_boxes=True, show_scores=True, score_max=3.0)
    assert _changed(img, out)[100, 120:200].all()                  # shoulder -> far-away elbow, to the edge


def test_empty_result_leaves_the_image_unchanged():
    img = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    _, out = _draw(PoseResult.empty(17), img=img, show_boxes=True, show_scores=True)
    np.testing.assert_array_equal(out, img)
    assert out is not img


def test_bad_image_is_refused():
    with pytest.raises(ValueError, match="uint8"):
        draw_poses(np.zeros((4, 4), np.uint8), PoseResult.empty(17))
