"""TFPose's decoding: the last decoder layer's normalised crop coordinates -> one person per crop in image pixels
(spec §7, §10). TFPose predicts no keypoint confidence: keypoint scores are 1 and the instance score is the box
score."""
from __future__ import annotations

import numpy as np
import torch

from ...structures import PoseResult
from ..topdown_regression import topdown_results

__all__ = ["flip_center", "coords_to_crop_pixels", "tfpose_results"]


def flip_center(udp: bool, width: int) -> float:
    """The normalised x that mirrors a crop of ``width`` pixels onto itself (see
    :func:`~regpose.models.topdown_regression.flip_back_coords`): 1 with UDP (u = x / (W - 1)), (W - 1) / W without."""
    return 1.0 if udp else (width - 1.0) / width


def coords_to_crop_pixels(coords: torch.Tensor, input_hw: tuple[int, int], udp: bool) -> torch.Tensor:
    """Normalised (B, K, 2) -> crop pixels: u (W - 1) with UDP (spec §5/§7), u W without."""
    h, w = input_hw
    scale = torch.tensor([w - 1.0, h - 1.0] if udp else [float(w), float(h)], dtype=coords.dtype,
                         device=coords.device)
    return coords * scale


def tfpose_results(coords: torch.Tensor, metas: list[dict], input_hw: tuple[int, int], udp: bool) -> list[PoseResult]:
    """Normalised coordinates (B, K, 2) of B crops -> one :class:`PoseResult` per crop in original pixels
    (``meta["inverse"]``; keypoint scores 1, instance score = box score)."""
    coords = torch.as_tensor(coords).float().cpu()
    # topdown_results maps u -> u (W, H) -> image; hand it crop pixels / (W, H) so UDP's (W - 1) holds.
    pixels = coords_to_crop_pixels(coords, input_hw, udp)
    normalised = pixels / torch.tensor([input_hw[1], input_hw[0]], dtype=pixels.dtype)
    results = topdown_results(normalised, torch.ones(coords.shape[:2]), metas, input_hw)
    for r in results:
        r.scores = np.asarray(r.extras["box_score"], dtype=np.float32).reshape(-1)
    return results
