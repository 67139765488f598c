"""DEKR's codec: the official test resize policy by hand (spec §3.1), one implementation for the test sample and
the other scales of a multi-scale test, and the encoding of a person into heatmap / offset targets."""
from __future__ import annotations

import numpy as np
import pytest

from regpose.codecs.heatmap_offset import DEKRTestResize, encode, official_test_resize, resize_for_test
from regpose.config import ConfigError
from regpose.data.transforms import Compose


def test_resize_rounds_the_long_side_up_to_64():
    # 425x640 image, input 128: short side -> 128, long side 128/425*640 = 192.8 -> 256 (DEKR spec §3.1)
    assert official_test_resize(425, 640, 128)[0] == (256, 128)
    # ceil64(512 / 480 * 640 = 682.7) = 704, times the scale 0.5
    assert official_test_resize(480, 640, 512, 0.5)[0] == (352, 256)
    assert official_test_resize(480, 640, 512)[0] == (704, 512) and official_test_resize(640, 427, 512)[0] == (512, 768)
    with pytest.raises(ConfigError, match=r"^test\.scales: scale 0\.3 gives"):
        official_test_resize(480, 640, 512, 0.3)                      # 0.3 x 512 = 153.6 -> 153: not a multiple of 32


def test_test_sample_and_other_scales_share_one_resize():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    raw = {"image": image, "keypoints": np.array([[[320.0, 240.0, 2]]]), "boxes": np.zeros((0, 4))}
    s = Compose([DEKRTestResize(512, 1.0)])(raw)
    resized, inv = resize_for_test(image, 512, 1.0)
    assert s["image"].shape == (512, 704, 3) and np.array_equal(s["image"], resized)
    np.testing.assert_allclose(s["keypoints"][0, 0, :2], [352, 256])                   # the centre stays the centre
    np.testing.assert_allclose(np.linalg.inv(s["affine"])[:2], inv, atol=1e-12)
    assert raw["keypoints"][0, 0, 0] == 320.0                                          # the raw sample is untouched


def test_encode_draws_the_person_and_masks_the_heatmap_weight():
    joints = np.array([[[10.0, 12.0, 2], [20.0, 12.0, 2], [15.0, 12.0, 1]]])         # K = 2 joints + centre
    mask = np.ones((32, 32), np.float32)
    mask[:, :4] = 0
    t = encode(joints, np.array([400.0]), mask, 32, sigma=2.0, center_sigma=4.0, bg_weight=0.1, offset_radius=4)
    assert t["heatmap"].shape == (3, 32, 32) and t["heatmap"][0, 12, 10] == 1.0 and t["heatmap"][1, 12, 20] == 1.0
    assert np.array_equal(t["mask"], mask[None] * t["heatmap_weight"]) and t["mask"][0, 0, 0] == 0
    # offsets around the centre point at the joints: centre (15, 12) - joint (10, 12) = (5, 0)
    assert t["offset"].shape == (4, 32, 32) and tuple(t["offset"][0:2, 12, 15]) == (5.0, 0.0)
    assert t["offset_weight"][0, 12, 15] == pytest.approx(1 / np.sqrt(400.0))
