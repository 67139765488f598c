"""The one-stage codec (DirectPose, QueryPose): detectron2's +0.5 keypoint encoding, the decoding back to original
pixel indices / continuous boxes by hand, and the two pixel normalisations of the shared transform."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from regpose.codecs.onestage import (OneStageTransform, decode_boxes, decode_keypoints, encode_keypoints,
                                     rescale_batch)
from regpose.data.transforms import Compose, ResizeShortestEdge


def test_encode_adds_half_a_pixel_to_labelled_keypoints_only():
    kp = np.array([[[10.0, 20.0, 2], [3.0, 4.0, 0]]])
    enc = encode_keypoints(kp, 1)
    assert enc.dtype == np.float32 and enc[0, 0].tolist() == [10.5, 20.5, 2] and enc[0, 1].tolist() == [0, 0, 0]
    assert encode_keypoints(np.zeros((0, 17, 3)), 0).shape == (0, 17, 3)


def test_decode_undoes_the_half_pixel_and_the_resize():
    inverse = np.array([[0.5, 0.0, 0.25], [0.0, 0.5, -1.0]])    # input px -> original px
    kp = torch.tensor([[[10.5, 20.5, 0.9]]])
    out = decode_keypoints(kp, inverse)
    assert out.dtype == torch.float64
    np.testing.assert_allclose(out[0, 0].numpy(), [0.5 * 10 + 0.25, 0.5 * 20 - 1.0, 0.9], atol=1e-7)
    boxes = decode_boxes(torch.tensor([[2.0, 4.0, 10.0, 12.0]]), inverse)
    # corner c is the pixel-index point c - 0.5: (c - 0.5) * 0.5 + t + 0.5
    np.testing.assert_allclose(boxes[0].numpy(), [(1.5 * 0.5 + 0.25) + 0.5, (3.5 * 0.5 - 1.0) + 0.5,
                                                  (9.5 * 0.5 + 0.25) + 0.5, (11.5 * 0.5 - 1.0) + 0.5])


def test_transform_round_trip_and_both_normalisations():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    kp = np.array([[[12.0, 30.0, 2], [50.0, 8.0, 1]]])
    raw = {"image": image, "keypoints": kp, "boxes": np.array([[5.0, 5.0, 55.0, 35.0]]), "image_id": 3,
           "sample_index": 0, "file_name": "x", "orig_size": (40, 60)}
    geo = Compose([ResizeShortestEdge(80, 1333)])
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    s = OneStageTransform(geo, mean, std, pixel_range=1)(dict(raw))
    t = s["target"]
    assert t["image_size"].tolist() == [80, 120] and t["labels"].tolist() == [0]
    back = decode_keypoints(t["keypoints"], s["meta"]["inverse"])
    np.testing.assert_allclose(back[0, :, :2].numpy(), kp[0, :, :2], atol=1e-4)
    np.testing.assert_allclose(decode_boxes(t["boxes"], s["meta"]["inverse"]).numpy(), raw["boxes"], atol=1e-4)
    s255 = OneStageTransform(geo, [255 * m for m in mean], [255 * v for v in std], pixel_range=255)(dict(raw))
    torch.testing.assert_close(s255["image"], s["image"], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="pixel_range"):
        OneStageTransform(geo, mean, std, pixel_range=2)


def test_rescale_batch_rounds_each_side_to_a_multiple_of_32():
    x = torch.rand(2, 3, 96, 160)
    assert rescale_batch(x, 1.0) is x
    # 96 x 0.75 = 72 -> 64, 160 x 0.75 = 120 -> 128; the sides never drop below 32
    assert rescale_batch(x, 0.75).shape[-2:] == (64, 128) and rescale_batch(x, 0.1).shape[-2:] == (32, 32)
