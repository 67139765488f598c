"""TFPose's decoding: the last decoder layer's normalised crop coordinates -> one person per crop in image pixels
through the top-down regression codec (spec §7, §10). TFPose predicts no keypoint confidence: keypoint scores are 1
and the instance score is the box score."""
from __future__ import annotations

import numpy as np
import torch

from ...codecs.topdown_regression import decode_crops
from ...structures import PoseResult

__all__ = ["flip_center", "tfpose_results"]


def flip_center(udp: bool, width: int) -> float:
    """The normalised x that mirrors a crop of ``width`` pixels onto itself (see
    :func:`~regpose.models.topdown_regression.flip_back_coords`): 1 with UDP (u = x / (W - 1)), (W - 1) / W without."""
    return 1.0 if udp else (width - 1.0) / width


def tfpose_results(coords: torch.Tensor, metas: list[dict], input_hw: tuple[int, int]) -> list[PoseResult]:
    """Normalised coordinates (B, K, 2) of B crops -> one :class:`PoseResult` per crop in original pixels
    (``meta["inverse"]``, UDP per ``meta["udp"]``; keypoint scores 1, instance score = box score)."""
    coords = torch.as_tensor(coords)
    results = decode_crops(coords, torch.ones(coords.shape[:2]), metas, input_hw)
    for r in results:
        r.scores = np.asarray(r.extras["box_score"], dtype=np.float32).reshape(-1)
    return results
