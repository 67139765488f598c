"""Keypoint layouts: flip maps, sigmas and part schemes agree with the reference tools and the annotation files."""
import json

import numpy as np
import pytest

from conftest import REAL
from regpose.data.keypoints import FORMATS, get_meta
from regpose.errors import DataError


@pytest.mark.parametrize("fmt", FORMATS)
def test_flip_index_is_an_involution_that_swaps_left_and_right(fmt):
    m = get_meta(fmt)
    fi = m.flip_index
    assert np.array_equal(fi[fi], np.arange(m.num_keypoints))
    for i, j in enumerate(fi):
        a, b = m.keypoint_names[i], m.keypoint_names[j]
        if i == j:
            assert not a.startswith(("left", "right", "l_", "r_"))
        else:
            side = {"left_": "right_", "right_": "left_", "l_": "r_", "r_": "l_"}
            pre = next(p for p in side if a.startswith(p))
            assert b == side[pre] + a[len(pre):]


def test_flip_indices_match_dekr_spec():
    assert get_meta("coco").flip_index.tolist() == [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]
    assert get_meta("crowdpose").flip_index.tolist() == [1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 12, 13]


def test_sigmas_are_the_reference_tools_constants():
    from pycocotools.cocoeval import Params
    from xtcocotools.cocoeval import COCOeval as XtEval

    assert np.array_equal(get_meta("coco").sigmas, Params(iouType="keypoints").kpt_oks_sigmas)
    assert np.array_equal(get_meta("coco").sigmas, XtEval(iouType="keypoints").sigmas)
    assert np.allclose(get_meta("crowdpose").sigmas * 10, [.79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89,
                                                            .89, .79, .79])


@pytest.mark.parametrize("fmt,ann", [("coco", "coco/test_coco.json"), ("crowdpose", "crowdpose/test_crowdpose.json"),
                                     ("ochuman", "ochuman/test_ochuman.json")])
def test_names_and_skeleton_match_the_real_files(fmt, ann):
    cat = json.loads((REAL / ann).read_text())["categories"][0]
    m = get_meta(fmt)
    assert list(m.keypoint_names)[:12] == [n.replace("top_head", "head") for n in cat["keypoints"]][:12]
    if fmt != "crowdpose":   # CrowdPose's file carries COCO's skeleton (indices beyond 14); ours is its own
        assert sorted(tuple(sorted((a - 1, b - 1))) for a, b in cat["skeleton"]) == \
            sorted(tuple(sorted(p)) for p in m.skeleton)


@pytest.mark.parametrize("fmt", FORMATS)
def test_part_schemes_partition_the_keypoints(fmt):
    m = get_meta(fmt)
    sizes = {}
    for s in "abcd":
        parts = m.parts(s)
        assert sorted(sum(parts, [])) == list(range(m.num_keypoints))
        sizes[s] = len(parts)
    assert sizes["a"] == m.num_keypoints and sizes["c"] == 7 and sizes["d"] == 5
    if fmt == "coco":  # QueryPose Table 3d: 17 / 13 / 7 / 5 parts
        assert sizes == {"a": 17, "b": 13, "c": 7, "d": 5}
        assert m.parts("c") == [[0, 1, 2, 3, 4], [5, 6], [7, 9], [8, 10], [11, 12], [13, 15], [14, 16]]


def test_halves_cover_everything_once():
    for fmt in FORMATS:
        m = get_meta(fmt)
        assert sorted(m.upper_body_ids + m.lower_body_ids) == list(range(m.num_keypoints))
    assert get_meta("coco").upper_body_ids == tuple(range(11))


def test_unknown_format_is_a_one_line_error():
    with pytest.raises(DataError, match="unknown keypoint format 'cocoa'"):
        get_meta("cocoa")
