"""QueryPose's set loss (spec 5, 6): targets of a batch, the matched pairs of one stage, the Sparse R-CNN box
losses (focal, L1, GIoU) and the RLE keypoint loss (Eq. 4) in the frame of the matched query's box.

Matching is :class:`~regpose.models.layers.matcher.HungarianMatcher` (focal / L1 / GIoU costs); the deep-supervised
training forward that runs the keypoint decoder on the matched queries of each stage is
:meth:`QueryPose.losses <regpose.models.querypose.model.QueryPose.losses>`."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from ..layers.distributed import global_normalizer
from ..layers.rle import RealNVP, rle_loss
from .config import QueryPoseConfig

__all__ = ["prepare_targets", "num_people", "matched_targets", "box_losses", "keypoint_loss"]


def prepare_targets(targets: list[dict], image_sizes: torch.Tensor, num_keypoints: int, dtype: torch.dtype,
                    device: torch.device) -> list[dict]:
    """Per image: ``labels`` (M,) zeros (one class), ``boxes`` (M, 4) xyxy, ``keypoints`` (M, K, 3) input pixels
    and ``image_size_xyxy`` (w, h, w, h) of the unpadded input (the L1 loss and cost normalise by it)."""
    wh = image_sizes.flip(-1).to(dtype)
    out = []
    for i, t in enumerate(targets):
        boxes = t["boxes"].to(device, dtype).reshape(-1, 4)
        out.append({"labels": torch.zeros(len(boxes), dtype=torch.long, device=device), "boxes": boxes,
                    "keypoints": t["keypoints"].to(device, dtype).reshape(len(boxes), num_keypoints, 3),
                    "image_size_xyxy": torch.cat([wh[i], wh[i]])})
    return out


def num_people(targets: list[dict], device: torch.device) -> torch.Tensor:
    """Official code (Sparse R-CNN SetCriterion): ground-truth people of the global batch, averaged over
    processes, at least 1 -- the count every loss term divides by."""
    return global_normalizer(torch.tensor(float(sum(len(t["boxes"]) for t in targets)), device=device))


def matched_targets(targets: list[dict], indices: list[tuple[torch.Tensor, torch.Tensor]], num_proposals: int):
    """The matched slots of one stage, image-major in ascending proposal index (spec 0.3): flat indices into
    the B*N proposals and their ground-truth boxes (n, 4), keypoints (n, K, 3) and image sizes (n, 4)."""
    flat = torch.cat([i * num_proposals + pi for i, (pi, _) in enumerate(indices)])
    gt_boxes = torch.cat([t["boxes"][gi] for t, (_, gi) in zip(targets, indices)])
    gt_kpts = torch.cat([t["keypoints"][gi] for t, (_, gi) in zip(targets, indices)])
    sizes = torch.cat([t["image_size_xyxy"][None].expand(len(gi), 4) for t, (_, gi) in zip(targets, indices)])
    return flat, gt_boxes, gt_kpts, sizes


def box_losses(cfg: QueryPoseConfig, logits: torch.Tensor, boxes: torch.Tensor, flat: torch.Tensor,
               gt_boxes: torch.Tensor, sizes: torch.Tensor, num_boxes: torch.Tensor) -> dict:
    """Weighted sigmoid focal loss on every proposal's class logit (matched = person), L1 on image-size
    normalised boxes and GIoU on the matched boxes; each summed and divided by ``num_boxes``."""
    flat_logits = logits.reshape(-1, logits.shape[-1])
    labels = torch.zeros_like(flat_logits)
    labels[flat, 0] = 1.0
    loss_ce = sigmoid_focal_loss(flat_logits, labels, cfg.focal_alpha, cfg.focal_gamma, "sum") / num_boxes
    src = boxes.reshape(-1, 4)[flat]
    loss_bbox = F.l1_loss(src / sizes, gt_boxes / sizes, reduction="sum") / num_boxes
    loss_giou = generalized_box_iou_loss(src, gt_boxes, reduction="sum") / num_boxes
    return {"loss_ce": cfg.class_weight * loss_ce, "loss_bbox": cfg.l1_weight * loss_bbox,
            "loss_giou": cfg.giou_weight * loss_giou}


def keypoint_loss(flow: RealNVP, mu: torch.Tensor, sigma: torch.Tensor, gt_kpts: torch.Tensor, boxes: torch.Tensor,
                  num_boxes: torch.Tensor) -> torch.Tensor:
    """RLE (Eq. 4, spec 5): targets in the frame of the matched query's detached predicted box (0 = centre,
    +-0.5 = edges); keypoints that are unlabelled or outside that box get no loss. Divided by num_boxes * K."""
    x1y1 = boxes[:, None, :2]
    wh = (boxes[:, 2:] - boxes[:, :2])[:, None, :]
    rel = gt_kpts[..., :2] - x1y1                                      # (n, K, 2)
    target = rel / wh - 0.5
    inside = ((rel >= 0) & (rel <= wh)).all(-1)
    w = ((gt_kpts[..., 2] > 0) & inside).to(mu.dtype)[..., None].expand_as(mu)
    return rle_loss(mu, sigma, target, w, flow, num_boxes * gt_kpts.shape[1])
