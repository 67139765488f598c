"""Hungarian (bipartite) matching of predictions to ground truth, DETR / Sparse R-CNN style.

Cost = w_class * C_class + w_bbox * L1(boxes / image size) + w_giou * (-GIoU) [+ optional extra costs],
solved per image with scipy's ``linear_sum_assignment``. Predictions with no partner are background.
"""
from __future__ import annotations

from typing import Sequence

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import generalized_box_iou

__all__ = ["HungarianMatcher", "focal_class_cost"]


def focal_class_cost(logits: torch.Tensor, labels: torch.Tensor, alpha: float = 0.25,
                     gamma: float = 2.0) -> torch.Tensor:
    """Focal-loss-shaped classification cost (Deformable DETR / Sparse R-CNN): (N, C) logits, (M,) labels
    -> (N, M) = alpha (1-p)^g (-log p) - (1-alpha) p^g (-log(1-p)), p = sigmoid(logit of the GT class)."""
    prob = logits.sigmoid()
    neg = (1 - alpha) * prob ** gamma * (-(1 - prob + 1e-8).log())
    pos = alpha * (1 - prob) ** gamma * (-(prob + 1e-8).log())
    return pos[:, labels] - neg[:, labels]


class HungarianMatcher(nn.Module):
    """One-to-one assignment per image.

    forward(logits (B, N, C), boxes (B, N, 4) xyxy pixels, targets) with each target a dict holding
    ``labels`` (M,) int64, ``boxes`` (M, 4) xyxy pixels and ``image_size_xyxy`` (4,) = (w, h, w, h) of the
    unpadded image (the L1 cost compares boxes divided by it). ``extra_costs`` optionally adds a (N, M)
    cost per image (e.g. a keypoint cost). Returns per image (pred_index, gt_index) int64 tensors, with
    pred_index ascending (scipy's row order) and min(N, M) pairs.
    """

    def __init__(self, cost_class: float = 2.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                 use_focal: bool = True, focal_alpha: float = 0.25, focal_gamma: float = 2.0):
        super().__init__()
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.use_focal = use_focal
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    @torch.no_grad()
    def cost_matrix(self, logits: torch.Tensor, boxes: torch.Tensor, target: dict) -> torch.Tensor:
        """(N, M) matching cost of one image."""
        labels, tgt_boxes = target["labels"], target["boxes"]
        if self.use_focal:
            c_class = focal_class_cost(logits, labels, self.focal_alpha, self.focal_gamma)
        else:
            c_class = -logits.softmax(-1)[:, labels]
        size = target["image_size_xyxy"].to(boxes)
        c_bbox = torch.cdist(boxes / size, tgt_boxes / size, p=1)
        c_giou = -generalized_box_iou(boxes, tgt_boxes)
        return self.cost_bbox * c_bbox + self.cost_class * c_class + self.cost_giou * c_giou

    @torch.no_grad()
    def forward(self, logits: torch.Tensor, boxes: torch.Tensor, targets: Sequence[dict],
                extra_costs: Sequence[torch.Tensor] | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        out = []
        for b, target in enumerate(targets):
            m = len(target["labels"])
            if m == 0:
                empty = torch.zeros(0, dtype=torch.int64, device=logits.device)
                out.append((empty, empty.clone()))
                continue
            cost = self.cost_matrix(logits[b].float(), boxes[b].float(), target)
            if extra_costs is not None:
                cost = cost + extra_costs[b]
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            out.append((torch.as_tensor(rows, dtype=torch.int64, device=logits.device),
                        torch.as_tensor(cols, dtype=torch.int64, device=logits.device)))
        return out
