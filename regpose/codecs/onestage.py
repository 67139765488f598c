"""One-stage codec (DirectPose, QueryPose): whole images resized by their short side (detectron2 semantics),
targets in network-input pixels with detectron2's +0.5 convention, and the way back to the original image.

Coordinates: the data pipeline keeps keypoints as pixel indices (pixel centres at integers); detectron2, the FCOS
locations floor(s/2) + j s and both official codes work in continuous coordinates (pixel i covers [i, i + 1)), so
:func:`encode_keypoints` adds 0.5 and :func:`decode_keypoints` takes it off again on the way to the original image.
Boxes are continuous throughout (their mapped corners are moved by the pixel-index affine with the same shift).

  * test-time resize: :func:`regpose.data.transforms.onestage_test_transforms` (one short side, ``data.augment.
    onestage``), and :func:`rescale_batch` for the other factors of a multi-scale test;
  * encoding: :class:`OneStageTransform` (image normalisation + ``boxes`` / ``keypoints`` / ``labels`` /
    ``image_size`` targets);
  * decoding: :func:`decode_keypoints`, :func:`decode_boxes` (network-input continuous -> original pixels).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.transforms import make_meta, onestage_test_transforms, onestage_train_transforms, to_tensor_normalize
from .multiscale import resolve_test_scales

__all__ = ["OneStageTransform", "onestage_transform", "encode_keypoints", "decode_keypoints", "decode_boxes",
           "rescale_batch"]


def encode_keypoints(keypoints: np.ndarray, num_people: int) -> np.ndarray:
    """(M, K, 3) pixel-index keypoints -> float32 continuous coordinates (+0.5); unlabelled ones (v = 0) are 0."""
    kp = np.array(keypoints, dtype=np.float32)                      # M may be 0 (pictures without labels)
    kp = kp.reshape(num_people, kp.shape[-2] if kp.ndim == 3 else -1, 3)
    labelled = kp[..., 2] > 0
    kp[..., :2] = np.where(labelled[..., None], kp[..., :2] + 0.5, 0.0)
    return kp


def _affine(points: torch.Tensor, inverse) -> torch.Tensor:
    """(..., 2) float64 points through a (2, 3) affine."""
    a = torch.as_tensor(np.asarray(inverse, dtype=np.float64), device=points.device).reshape(2, 3)
    return points @ a[:, :2].T + a[:, 2]


def decode_keypoints(keypoints: torch.Tensor, inverse) -> torch.Tensor:
    """Network-input continuous (..., 2+) -> original-image pixel indices (the COCO json frame) through
    ``meta["inverse"]`` (a pixel-index affine): the +0.5 of :func:`encode_keypoints` is taken off first; columns
    after x, y (scores) are kept. float64 out."""
    kp = keypoints.double()
    return torch.cat((_affine(kp[..., :2] - 0.5, inverse), kp[..., 2:]), -1)


def decode_boxes(boxes: torch.Tensor, inverse) -> torch.Tensor:
    """Network-input continuous xyxy (N, 4) -> original-image continuous xyxy: the extent of the four mapped
    corners (each shifted to pixel indices for the affine and back). float64 out."""
    b = boxes.double()
    corners = torch.stack((b[:, [0, 1]], b[:, [2, 1]], b[:, [0, 3]], b[:, [2, 3]]), 1)
    c = _affine(corners - 0.5, inverse) + 0.5
    return torch.cat((c.min(1).values, c.max(1).values), 1)


def rescale_batch(images: torch.Tensor, scale: float) -> torch.Tensor:
    """The padded batch at one multi-scale factor: bilinear, each side rounded to a multiple of 32 (at least 32)."""
    if scale == 1.0:
        return images
    h, w = images.shape[-2:]
    size = (int(round(h * scale / 32)) * 32 or 32, int(round(w * scale / 32)) * 32 or 32)
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False)


class OneStageTransform:
    """Raw sample -> ``{"image", "target", "meta"}`` for a one-stage method (picklable for data-loader workers).

    Geometry: the one-stage pipeline of :mod:`regpose.data.transforms` (``cfg.data.augment.onestage``; train:
    flip with keypoint swap, multi-scale short side, optional crop; test: one short side). Image: RGB normalised by
    the model's ``pixel_mean`` / ``pixel_std`` in the units of ``pixel_range``: 1 for torchvision's
    ``(x / 255 - mean) / std`` (DirectPose), 255 for detectron2's ``(x - mean) / std`` on 0..255 values
    (QueryPose's official order of operations). Target (network-input pixels): ``boxes`` (M, 4) xyxy,
    ``keypoints`` (M, K, 3) of :func:`encode_keypoints`, ``labels`` (M,) zeros (one class, person),
    ``image_size`` (h, w) of the unpadded input."""

    def __init__(self, geometric, pixel_mean: Sequence[float], pixel_std: Sequence[float], pixel_range: float):
        if pixel_range not in (1, 255):
            raise ValueError(f"pixel_range must be 1 or 255, got {pixel_range}")
        self.geometric = geometric
        self.mean = tuple(float(v) for v in pixel_mean)
        self.std = tuple(float(v) for v in pixel_std)
        self.pixel_range = pixel_range

    def normalize(self, image: np.ndarray) -> torch.Tensor:
        """uint8 (H, W, 3) RGB -> float32 (3, H, W) in the model's convention."""
        if self.pixel_range == 1:
            return to_tensor_normalize(image, self.mean, self.std)
        arr = image if image.flags.writeable else np.array(image)
        img = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).to(torch.float32)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return (img - mean) / std

    def __call__(self, raw: dict) -> dict:
        s = self.geometric(raw)
        image = self.normalize(s["image"])
        h, w = image.shape[-2:]
        boxes = np.asarray(s["boxes"], dtype=np.float32).reshape(-1, 4)
        kp = encode_keypoints(s["keypoints"], len(boxes))
        target = {"boxes": torch.from_numpy(boxes), "keypoints": torch.from_numpy(kp),
                  "labels": torch.zeros(len(kp), dtype=torch.long),
                  "image_size": torch.tensor([h, w], dtype=torch.long)}
        return {"image": image, "target": target, "meta": make_meta(s)}


def onestage_transform(cfg, train: bool, pixel_range: float, multi_scale: bool) -> OneStageTransform:
    """The one-stage data pipeline (``cfg.data.augment.onestage``) with the model's pixel normalisation; a test
    transform first checks ``test.scales`` against the method's ``multi_scale``."""
    if not train:
        resolve_test_scales(cfg.test, cfg.method, multi_scale)
    geo = onestage_train_transforms(cfg.data) if train else onestage_test_transforms(cfg.data)
    return OneStageTransform(geo, cfg.model.pixel_mean, cfg.model.pixel_std, pixel_range)
