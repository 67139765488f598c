"""TFPose's training loss (paper Eq. 5-7): L1 on the coordinates of every decoder layer + lambda x the auxiliary
heatmap MSE."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import TFPoseConfig

__all__ = ["tfpose_losses", "coordinate_l1_loss", "joints_mse_loss"]


def tfpose_losses(cfg: TFPoseConfig, layer_coords: list[torch.Tensor], heatmaps: torch.Tensor | None,
                  targets: list[dict]) -> dict:
    """Eq. 7: sum over decoder layers of the L1 loss (Eq. 5; last layer only without ``deep_supervision``) +
    lambda x heatmap MSE (Eq. 6) of the auxiliary head's ``heatmaps`` (B, K, H/4, W/4; None when it is off).
    ``layer_coords``: J_d (B, K, 2) per decoder layer; ``targets``: the samples' ``coords``, ``coord_weights``
    (K, 2) and, with heatmaps, ``heatmaps`` / ``heatmap_weights`` of
    :class:`~regpose.codecs.topdown_regression.TopDownRegressionTransform`."""
    ref = layer_coords[-1]
    target = torch.stack([t["coords"] for t in targets]).to(ref)                    # (B, K, 2)
    weight = torch.stack([t["coord_weights"] for t in targets]).to(ref)             # (B, K, 2)
    supervised = layer_coords if cfg.deep_supervision else layer_coords[-1:]
    offset = len(layer_coords) - len(supervised)
    losses = {f"loss_coord_{offset + d}": cfg.coord_loss_weight * coordinate_l1_loss(p, target, weight)
              for d, p in enumerate(supervised)}
    if heatmaps is not None:
        hm_target = torch.stack([t["heatmaps"] for t in targets]).to(heatmaps)
        hm_weight = torch.stack([t["heatmap_weights"] for t in targets]).to(heatmaps)
        if hm_target.shape[-2:] != heatmaps.shape[-2:]:
            raise ValueError(f"heatmap targets {tuple(hm_target.shape[-2:])} do not match the auxiliary head's "
                             f"output {tuple(heatmaps.shape[-2:])}: the input size must be a multiple of "
                             f"{2 ** cfg.aux_level} and the targets input / 4")
        losses["loss_heatmap"] = cfg.aux_loss_weight * joints_mse_loss(heatmaps, hm_target, hm_weight)
    return losses


def coordinate_l1_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Eq. 5 for one layer, mmpose ``L1Loss(use_target_weight=True)``: mean over B, K, xy of |w (J - J_gt)|.
    pred, target (B, K, 2); weight (B, K, 2) or (B, K, 1)."""
    # Assumption (spec §7): elementwise mean over every entry (unlabelled joints count as zeros), as mmpose does.
    return F.l1_loss(pred * weight, target * weight)


def joints_mse_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Eq. 6, mmpose ``JointsMSELoss(use_target_weight=True)`` as the spec gives it: mean over batch, joints and
    pixels of 0.5 (w (H - H_gt))^2. pred, target (B, K, h, w); weight (B, K)."""
    w = weight.reshape(*weight.shape[:2], 1, 1)
    return 0.5 * F.mse_loss(pred * w, target * w)
