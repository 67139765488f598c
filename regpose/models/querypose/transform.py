"""QueryPose's data pipeline: the one-stage geometry (detectron2 semantics) and its target encoding."""
from __future__ import annotations

import numpy as np
import torch

from ...data.transforms import make_meta, onestage_test_transforms, onestage_train_transforms

__all__ = ["QueryPoseSample", "querypose_transform"]


class QueryPoseSample:
    """Raw sample -> {"image", "target", "meta"} for QueryPose (picklable for loader workers).

    Geometry: the one-stage pipeline of :mod:`regpose.data.transforms` (detectron2 semantics; train: flip,
    multi-scale short side, crop; test: short side 800, max 1333). Image: RGB 0..255 normalised by the model's
    mean / std (official order of operations). Target: ``boxes`` (M, 4) xyxy, ``keypoints`` (M, K, 3) in
    network-input pixels with detectron2's +0.5 (pixel edges; what the official loss sees), ``labels`` (M,),
    ``image_size`` (h, w) of the unpadded input.
    """

    def __init__(self, geometric, pixel_mean, pixel_std):
        self.geometric = geometric
        self.mean = torch.tensor(pixel_mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(pixel_std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, raw: dict) -> dict:
        s = self.geometric(raw)
        arr = s["image"] if s["image"].flags.writeable else np.array(s["image"])
        img = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).to(torch.float32)
        h, w = img.shape[-2:]
        kp = np.array(s["keypoints"], dtype=np.float32)
        kp = kp.reshape(len(s["boxes"]), kp.shape[-2] if kp.ndim == 3 else -1, 3)
        labelled = kp[..., 2] > 0
        kp[..., :2] = np.where(labelled[..., None], kp[..., :2] + 0.5, 0.0)   # detectron2 +0.5; unlabelled 0
        target = {"boxes": torch.from_numpy(np.asarray(s["boxes"], dtype=np.float32).reshape(-1, 4)),
                  "keypoints": torch.from_numpy(kp),
                  "labels": torch.zeros(len(kp), dtype=torch.long),
                  "image_size": torch.tensor([h, w], dtype=torch.long)}
        return {"image": (img - self.mean) / self.std, "target": target, "meta": make_meta(s)}


def querypose_transform(cfg, train: bool) -> QueryPoseSample:
    """The one-stage data pipeline (``cfg.data.augment.onestage``) plus QueryPose's target encoding."""
    geo = onestage_train_transforms(cfg.data) if train else onestage_test_transforms(cfg.data)
    return QueryPoseSample(geo, cfg.model.pixel_mean, cfg.model.pixel_std)
