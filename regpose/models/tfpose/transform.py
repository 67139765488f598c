"""TFPose's data transform: the shared mmpose top-down crop and augmentation, with TFPose's coordinate targets
(normalised by (W - 1, H - 1) under UDP) and the auxiliary UDP heatmaps. Its ``(cfg, train)`` constructor is the
method's ``MethodSpec.transform``."""
from __future__ import annotations

import numpy as np
import torch

from ...data.targets import normalized_coords, udp_heatmaps
from ...data.transforms import make_meta, to_tensor_normalize, topdown_test_transforms, topdown_train_transforms
from .config import check_data

__all__ = ["TFPoseTransform"]


class TFPoseTransform:
    """Raw top-down sample -> ``{"image", "target", "meta"}`` with the shared mmpose top-down pipeline (centre /
    scale with padding 1.25, flip, half body, scale / rotation, affine crop; ``data.augment.topdown``) and TFPose's
    targets (spec §6-7):

      coords (K, 2)          joint / (W - 1, H - 1) under UDP (x / (W, H) without), in [0, 1] inside the crop
      coord_weights (K, 2)   labelled (v > 0) and inside the crop
      heatmaps (K, H/4, W/4) UDP Gaussians (sigma ``aux_sigma``), only when the auxiliary loss is on
      heatmap_weights (K,)   labelled and the Gaussian touches the map

    Picklable for data-loader workers."""

    def __init__(self, cfg, train: bool):
        check_data(cfg)
        self.train = train
        self.input_size = tuple(int(v) for v in cfg.data.input_size)                 # (W, H)
        self.udp = bool(cfg.data.augment.topdown.udp)
        m = cfg.model
        self.heatmaps = train and m.aux_heatmap and m.aux_loss_weight > 0
        self.heatmap_size = (self.input_size[0] // 4, self.input_size[1] // 4)
        self.sigma = float(m.aux_sigma)
        self.pipeline = topdown_train_transforms(cfg.data) if train else topdown_test_transforms(cfg.data)

    def targets(self, keypoints: np.ndarray) -> dict:
        """Targets of one person's (K, 3) keypoints in network-input pixels."""
        w, h = self.input_size
        _, weights = normalized_coords(keypoints, self.input_size)                 # labelled and inside the crop
        norm = np.array([w - 1.0, h - 1.0] if self.udp else [float(w), float(h)])
        coords = (np.asarray(keypoints, dtype=np.float64)[:, :2] / norm).astype(np.float32)
        target = {"coords": torch.from_numpy(coords), "coord_weights": torch.from_numpy(weights)}
        if self.heatmaps:
            # The paper generates the auxiliary targets with UDP (Sec. 4.1), whatever the crop convention.
            hm, hm_w = udp_heatmaps(keypoints, self.input_size, self.heatmap_size, self.sigma)
            target.update(heatmaps=torch.from_numpy(hm), heatmap_weights=torch.from_numpy(hm_w))
        return target

    def __call__(self, raw: dict, rng=None) -> dict:
        sample = self.pipeline(raw, rng)
        person = sample.get("person_index", -1)
        target = {}
        if person is not None and person >= 0:
            target = self.targets(sample["keypoints"][person])
        elif self.train:
            raise ValueError("top-down training samples need a ground-truth person (person_index >= 0)")
        return {"image": to_tensor_normalize(sample["image"]), "target": target, "meta": make_meta(sample)}
