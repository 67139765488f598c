"""DirectPose's data pipeline: the one-stage geometry (``cfg.data.augment.onestage``) and its target encoding."""
from __future__ import annotations

import numpy as np
import torch

from ...data.transforms import make_meta, onestage_test_transforms, onestage_train_transforms, to_tensor_normalize

__all__ = ["DirectPoseSample", "directpose_transform"]


class DirectPoseSample:
    """Raw sample -> {"image", "target", "meta"} for DirectPose (picklable for data-loader workers).

    Geometry: the one-stage pipeline of :mod:`regpose.data.transforms` from ``cfg.data.augment.onestage``
    (train: flip with keypoint swap, multi-scale short side, optional crop; test: one short side). Image: RGB
    ``(x / 255 - mean) / std``. Target (network-input pixels): ``boxes`` (M, 4) xyxy, ``keypoints`` (M, K, 3)
    in continuous coordinates (pixel index + 0.5, detectron2's convention, which the FCOS locations
    floor(s/2) + j s and the public DirectPose code use; unlabelled keypoints are 0), ``size`` (h, w).
    """

    def __init__(self, geometric, pixel_mean, pixel_std):
        self.geometric = geometric
        self.mean = tuple(float(v) for v in pixel_mean)
        self.std = tuple(float(v) for v in pixel_std)

    def __call__(self, raw: dict) -> dict:
        s = self.geometric(raw)
        image = to_tensor_normalize(s["image"], self.mean, self.std)
        h, w = image.shape[-2:]
        boxes = np.asarray(s["boxes"], dtype=np.float32).reshape(-1, 4)
        kp = np.array(s["keypoints"], dtype=np.float32)      # (M, K, 3); M may be 0 (pictures without labels)
        kp = kp.reshape(len(boxes), kp.shape[-2] if kp.ndim == 3 else -1, 3)
        labelled = kp[..., 2] > 0
        kp[..., :2] = np.where(labelled[..., None], kp[..., :2] + 0.5, 0.0)
        target = {"boxes": torch.from_numpy(boxes), "keypoints": torch.from_numpy(kp),
                  "size": torch.tensor([h, w], dtype=torch.long)}
        return {"image": image, "target": target, "meta": make_meta(s)}


def directpose_transform(cfg, train: bool) -> DirectPoseSample:
    """The one-stage data pipeline (``cfg.data.augment.onestage``) plus DirectPose's target encoding."""
    geo = onestage_train_transforms(cfg.data) if train else onestage_test_transforms(cfg.data)
    return DirectPoseSample(geo, cfg.model.pixel_mean, cfg.model.pixel_std)

