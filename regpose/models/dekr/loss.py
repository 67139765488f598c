"""DEKR's training losses (paper Eq. 4-5): weighted heatmap MSE and the normalised smooth-L1 offset loss. The
targets themselves are made in the data pipeline (:mod:`regpose.data.targets`, :mod:`.transform`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..layers.distributed import global_normalizer

__all__ = ["heatmap_loss", "offset_loss"]


def heatmap_loss(pred: torch.Tensor, gt: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted MSE averaged over every element (N, K+1, H, W); the weight map is 1 near people, BG_WEIGHT elsewhere,
    0 in ignored regions (paper Eq. 4)."""
    return (weight * (pred - gt) ** 2).mean()


def offset_loss(pred: torch.Tensor, gt: torch.Tensor, weight: torch.Tensor, beta: float = 1.0 / 9) -> torch.Tensor:
    """Smooth-L1 (beta 1/9) weighted by 1/sqrt(person area), summed and divided by the number of supervised
    entries (x and y counted separately, at least 1): the paper's normalised offset loss (Eq. 5).
    Official code: the count is the whole batch's, not per image or person (train_step README Q12), and per GPU
    (set to 1 when 0); we normalise over the global batch so results do not depend on the number of processes
    (identical with one process) (:func:`~regpose.models.layers.distributed.global_normalizer`)."""
    loss = F.smooth_l1_loss(pred, gt, reduction="none", beta=beta) * weight
    return loss.sum() / global_normalizer((weight > 0).sum())
