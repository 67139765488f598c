"""The RLE baseline's loss: the residual log-likelihood (RLE paper Eq. 8-10,
:func:`~regpose.models.layers.rle.rle_loss`) of the ground-truth coordinates under the predicted (mu, sigma)."""
from __future__ import annotations

from typing import Literal

import torch

from ..layers.rle import RealNVP, rle_loss

__all__ = ["rle_regression_loss"]


def rle_regression_loss(mu: torch.Tensor, sigma: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                        flow: RealNVP, normalizer: Literal["batch", "batch_keypoints"] = "batch") -> dict:
    """``{"loss_rle"}``: the RLE negative log-likelihood summed over keypoints and coordinates, divided by B (the
    original RLE code) or B * K. mu, sigma, target, weight (B, K, 2); with no labelled keypoint the plain sum (0)."""
    B, K = target.shape[:2]
    divisor = B if normalizer == "batch" else B * K
    return {"loss_rle": rle_loss(mu, sigma, target, weight, flow, divisor if weight.sum() > 0 else None)}
