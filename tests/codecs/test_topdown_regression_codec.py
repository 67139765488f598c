"""The top-down regression codec: coordinate targets (mmpose's default and UDP), their decoding through the crop's
affine back to image pixels, and the round trip through the real crop pipeline for both conventions."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from regpose.codecs.topdown_regression import decode_crops, encode, to_crop_pixels
from regpose.data.config import DataConfig
from regpose.data.transforms import make_meta, topdown_test_transforms


def test_encode_normalises_by_the_crop_size_and_weights_labelled_inside_points():
    kp = np.array([[0, 0, 2], [191, 255, 1], [191.5, 10, 2], [50, 60, 0]], np.float64)
    t, w = encode(kp, (192, 256))
    assert np.allclose(t[1], [191 / 192, 255 / 256]) and t.dtype == np.float32
    assert w[:, 0].tolist() == [1, 1, 0, 0] and w.shape == (4, 2)
    t_udp, w_udp = encode(kp, (192, 256), udp=True)
    assert np.allclose(t_udp[1], [1.0, 1.0]) and np.array_equal(w_udp, w)       # UDP: x / (W - 1)


def test_to_crop_pixels_udp_and_plain():
    c = torch.tensor([[[1.0, 1.0], [0.5, 0.25]]])
    torch.testing.assert_close(to_crop_pixels(c, (256, 192), udp=True),
                               torch.tensor([[[191.0, 255.0], [95.5, 63.75]]]))
    torch.testing.assert_close(to_crop_pixels(c, (256, 192), udp=False),
                               torch.tensor([[[192.0, 256.0], [96.0, 64.0]]]))


def test_decode_crops_maps_back_through_the_inverse_affine():
    mu = torch.tensor([[[0.5, 0.5], [0.0, 1.0]]])
    inverse = np.array([[2.0, 0.0, 10.0], [0.0, 2.0, 20.0]])   # crop px -> image px
    metas = [{"inverse": inverse, "box": [1, 2, 3, 4], "box_score": 0.5, "scale": [1.0, 2.0]}]
    res = decode_crops(mu, torch.tensor([[0.3, 0.6]]), metas, (256, 192))[0]
    np.testing.assert_allclose(res.keypoints[0, :, :2], [[2 * 96 + 10, 2 * 128 + 20], [10, 2 * 256 + 20]])
    np.testing.assert_allclose(res.extras["area"], [200.0 * 400.0])
    # meta["box"] is in network-input coordinates (continuous, COCO convention) and maps back the same way
    np.testing.assert_allclose(res.boxes[0], [11.5, 23.5, 15.5, 27.5])
    assert float(res.extras["box_score"][0]) == 0.5 and abs(float(res.scores[0]) - 0.45) < 1e-6
    # a UDP crop (meta["udp"]) decodes with (W - 1, H - 1): u = 1 is the last pixel
    res = decode_crops(mu, torch.ones(1, 2), [{**metas[0], "udp": True}], (256, 192))[0]
    np.testing.assert_allclose(res.keypoints[0, 1, :2], [10, 2 * 255 + 20])


@pytest.mark.parametrize("udp", [False, True])
def test_encode_then_decode_is_the_identity_through_the_real_crop(udp):
    """The crop records its convention in meta["udp"], so the decoding undoes the encoding of either one."""
    data = DataConfig(input_size=(48, 64))
    data.augment.topdown.udp = udp
    kp = np.array([[[30.0, 40.0, 2], [55.5, 70.25, 1], [12.0, 90.0, 2]]])
    raw = {"image": np.zeros((120, 100, 3), np.uint8), "keypoints": kp.copy(),
           "boxes": np.array([[10., 30., 70., 100.]]), "box": np.array([10., 30., 70., 100.]), "person_index": 0, "image_id": 1, "sample_index": 0,
           "file_name": "x", "orig_size": (120, 100)}
    s = topdown_test_transforms(data)(raw)
    meta = make_meta(s)
    assert meta["udp"] == udp
    coords, _ = encode(s["keypoints"][0], (48, 64), udp)
    res = decode_crops(torch.from_numpy(coords)[None], torch.ones(1, 3), [meta], (64, 48))[0]
    np.testing.assert_allclose(res.keypoints[0, :, :2], kp[0, :, :2], atol=1e-4)
