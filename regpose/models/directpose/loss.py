"""DirectPose's training targets and losses: FCOS location -> person assignment (spec §3), centerness, the
auxiliary heatmap targets (spec §4.4), the keypoint regression loss (spec §5) and the criterion combining them.

Every count a loss divides by is that of the global batch (FCOS: summed across GPUs / num_gpus, see
layers/distributed.py), so results do not depend on the number of processes."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from ..layers.distributed import global_normalizer
from .config import DirectPoseConfig

__all__ = ["INF", "fcos_assign", "centerness_target", "keypoint_boxes", "heatmap_targets", "keypoint_loss",
           "DirectPoseCriterion"]

INF = 1e8


def fcos_assign(locations: torch.Tensor, strides: torch.Tensor, size_ranges: torch.Tensor, boxes: torch.Tensor,
                radius: float = 1.5) -> tuple[torch.Tensor, torch.Tensor]:
    """FCOS location -> instance assignment, vectorised over locations x boxes.

    locations (L, 2) image points; strides (L,); size_ranges (L, 2) the [lo, hi] of each location's level;
    boxes (M, 4) xyxy. A location is a candidate for a box if it lies strictly inside the box's centre
    sub-box (half-size radius * stride, clipped to the box; radius 0: inside the box itself) and
    lo <= max(l*, t*, r*, b*) <= hi; ambiguous locations take the smallest-area box.
    Returns matched (L,) long (-1 = background) and ltrb (L, 4) distances to the matched box (pixels).
    """
    L, M = locations.shape[0], boxes.shape[0]
    if M == 0:
        return locations.new_full((L,), -1, dtype=torch.long), locations.new_zeros((L, 4))
    x, y = locations[:, 0, None], locations[:, 1, None]                     # (L, 1)
    x0, y0, x1, y1 = boxes.unbind(1)                                        # (M,)
    ltrb = torch.stack((x - x0, y - y0, x1 - x, y1 - y), dim=2)             # (L, M, 4)
    if radius > 0:
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        rs = strides[:, None].to(locations.dtype) * radius                 # (L, 1)
        sx0, sy0 = torch.maximum(cx - rs, x0), torch.maximum(cy - rs, y0)   # sub-box clipped to the box
        sx1, sy1 = torch.minimum(cx + rs, x1), torch.minimum(cy + rs, y1)
        inside = torch.stack((x - sx0, y - sy0, sx1 - x, sy1 - y), 2).min(2).values > 0
    else:
        inside = ltrb.min(2).values > 0
    max_reg = ltrb.max(2).values
    cared = (max_reg >= size_ranges[:, 0, None]) & (max_reg <= size_ranges[:, 1, None])
    area = ((x1 - x0) * (y1 - y0))[None].expand(L, M)
    area = torch.where(inside & cared, area, torch.full_like(area, INF))
    min_area, matched = area.min(1)
    matched = torch.where(min_area < INF, matched, torch.full_like(matched, -1))
    ltrb = ltrb.gather(1, matched.clamp(min=0)[:, None, None].expand(L, 1, 4)).squeeze(1)
    return matched, ltrb


def centerness_target(ltrb: torch.Tensor) -> torch.Tensor:
    """sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)) (FCOS)."""
    lr, tb = ltrb[:, [0, 2]], ltrb[:, [1, 3]]
    c = (lr.min(1).values / lr.max(1).values).clamp(min=0) * (tb.min(1).values / tb.max(1).values).clamp(min=0)
    return torch.sqrt(c)


def keypoint_boxes(keypoints: torch.Tensor, image_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """[GCV] assignment boxes: min/max of the labelled keypoints +-1 px, clipped to the image.
    keypoints (M, K, 3) -> boxes (M', 4) and the indices of people with at least one labelled keypoint."""
    lab = keypoints[..., 2] > 0
    keep = torch.nonzero(lab.any(1)).squeeze(1)
    kp, lab = keypoints[keep], lab[keep]
    big = torch.full_like(kp[..., 0], INF)
    x0 = torch.where(lab, kp[..., 0], big).min(1).values - 1
    y0 = torch.where(lab, kp[..., 1], big).min(1).values - 1
    x1 = torch.where(lab, kp[..., 0], -big).max(1).values + 1
    y1 = torch.where(lab, kp[..., 1], -big).max(1).values + 1
    h, w = image_hw
    boxes = torch.stack((x0.clamp(0, w), y0.clamp(0, h), x1.clamp(0, w), y1.clamp(0, h)), 1)
    return boxes, keep


def heatmap_targets(keypoints: torch.Tensor, hw: tuple[int, int], stride: int, kind: str = "binary",
                    sigma: float = 1.0) -> torch.Tensor:
    """Auxiliary heatmap targets (spec §4.4): for every labelled keypoint, the cell that contains it is 1 in
    its channel (one-vs-all; no background channel). ``gaussian``: a Gaussian of ``sigma`` cells around that
    cell instead (max over people). keypoints (M, K, 3) image pixels -> (K, H, W)."""
    M, K = keypoints.shape[:2]
    h, w = hw
    out = keypoints.new_zeros((K, h, w))
    ix = torch.floor(keypoints[..., 0] / stride).long()
    iy = torch.floor(keypoints[..., 1] / stride).long()
    ok = (keypoints[..., 2] > 0) & (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    k = torch.arange(K, device=keypoints.device).expand(M, K)
    ix, iy, k = ix[ok], iy[ok], k[ok]
    if kind == "binary":
        out[k, iy, ix] = 1.0
        return out
    # Assumption (spec §9 hm_target=gaussian): CenterNet-style unnormalised Gaussian peaked (=1) on the cell.
    ys = torch.arange(h, device=keypoints.device, dtype=keypoints.dtype)
    xs = torch.arange(w, device=keypoints.device, dtype=keypoints.dtype)
    g = torch.exp(-((xs[None, None] - ix[:, None, None]) ** 2 + (ys[None, :, None] - iy[:, None, None]) ** 2)
                  / (2 * sigma ** 2))                                           # (P, H, W)
    out = out.view(K, h * w).scatter_reduce(0, k[:, None].expand(-1, h * w), g.view(-1, h * w), "amax")
    return out.view(K, h, w)



def keypoint_loss(pred: torch.Tensor, target: torch.Tensor, labelled: torch.Tensor, ctr: torch.Tensor,
                  kind: str = "l1_ctr") -> torch.Tensor:
    """Keypoint regression loss over positive locations (spec §5), offsets in stride units.

    pred, target (P, K, 2); labelled (P, K) 0/1; ctr (P,) centerness targets.
    l1_ctr [MB]: e_ik = mean_xy |o - t|, l_i = sum_k v e / max(n_i, 1), L = sum_i c_i [n_i>0] l_i /
    max(sum_i c_i [n_i>0], 1). smoothl1_ctr_nvis [GCV]: smooth-L1 (beta 1/9), instance weight c_i n_i.
    """
    v = labelled.to(pred.dtype)
    n = v.sum(1)                                                           # (P,)
    if kind == "l1_ctr":
        e = (pred - target).abs().mean(2)                                  # (P, K)
        per_inst = (e * v).sum(1) / n.clamp(min=1)
        w = ctr * (n > 0).to(pred.dtype)
        return (w * per_inst).sum() / global_normalizer(w.sum())
    e = F.smooth_l1_loss(pred, target, beta=1.0 / 9, reduction="none").mean(2)
    # Assumption (spec §5): mean over x, y; normalised by sum_i c_i n_i (every labelled keypoint counts once).
    return (ctr[:, None] * e * v).sum() / global_normalizer((ctr * n).sum(), 1e-6)


class DirectPoseCriterion:
    """Every DirectPose training loss of one batch (spec §5): focal classification, centerness BCE, keypoint
    regression, and as configured the locator, visibility, FCOS box and auxiliary heatmap losses.

    ``strides`` are the FPN levels' (P3 first), ``size_ranges`` their FCOS [lo, hi] object sizes, ``groups`` the
    KPAlign keypoint groups (``None`` for the naive head). Holds no parameters."""

    def __init__(self, cfg: DirectPoseConfig, num_keypoints: int, strides: list[int],
                 size_ranges: list[tuple[float, float]], groups: list[list[int]] | None):
        self.cfg = cfg
        self.num_keypoints = num_keypoints
        self.base_stride = strides[0]
        self.size_ranges = size_ranges
        self.groups = groups

    def assign(self, raw: dict, targets: list[dict], image_hw) -> dict:
        """FCOS assignment for every image; returns per-location targets for the whole batch."""
        locs, strides = raw["locations"], raw["strides"]
        ranges = torch.tensor(self.size_ranges, device=locs.device, dtype=locs.dtype)
        level_of = torch.log2(strides / self.base_stride).round().long()
        size_ranges = ranges[level_of]                                              # (L, 2)
        K = self.num_keypoints
        pos, ltrb, kps = [], [], []
        for t in targets:
            boxes = t["boxes"].to(locs).reshape(-1, 4)
            kp = t["keypoints"].to(locs).reshape(-1, K, 3)
            if self.cfg.assign_box == "keypoint_box":
                hw = tuple(int(v) for v in t["image_size"]) if "image_size" in t else tuple(image_hw)
                boxes, keep = keypoint_boxes(kp, hw)
                kp = kp[keep]
            matched, d = fcos_assign(locs, strides, size_ranges, boxes, self.cfg.center_sampling_radius)
            pos.append(matched >= 0)
            ltrb.append(d)
            kps.append(kp[matched.clamp(min=0)] if len(kp) else kp.new_zeros((len(locs), K, 3)))
        return {"pos": torch.stack(pos), "ltrb": torch.stack(ltrb), "keypoints": torch.stack(kps)}

    def __call__(self, raw: dict, targets: list[dict], image_hw) -> dict:
        """Raw training outputs (:meth:`DirectPose._network`) and targets -> weighted losses and ``num_pos``."""
        cfg = self.cfg
        a = self.assign(raw, targets, image_hw)
        pos = a["pos"]                                                              # (N, L) bool
        n_pos = global_normalizer(pos.sum())
        losses = {}
        losses["loss_cls"] = sigmoid_focal_loss(raw["cls_logits"], pos.to(raw["cls_logits"].dtype),
                                                alpha=cfg.focal_alpha, gamma=cfg.focal_gamma,
                                                reduction="sum") / n_pos
        stride_pos = raw["strides"][None].expand_as(pos)[pos]                      # (P,)
        loc_pos = raw["locations"][None].expand(pos.shape[0], -1, -1)[pos]          # (P, 2)
        ltrb = a["ltrb"][pos]                                                       # (P, 4) pixels
        ctr_t = centerness_target(ltrb) if len(ltrb) else ltrb.new_zeros((0,))
        losses["loss_ctr"] = F.binary_cross_entropy_with_logits(
            raw["ctr_logits"][pos], ctr_t, reduction="sum") / n_pos
        kp = a["keypoints"][pos]                                                    # (P, K, 3) pixels
        labelled = kp[..., 2] > 0
        kp_t = (kp[..., :2] - loc_pos[:, None]) / stride_pos[:, None, None]         # (P, K, 2) stride units
        kp_t = torch.where(labelled[..., None], kp_t, torch.zeros_like(kp_t))      # v = 0: target 0, weight 0
        losses["loss_kpt"] = cfg.kpt_loss_weight * keypoint_loss(raw["offsets"][pos], kp_t, labelled, ctr_t,
                                                                 cfg.kpt_loss)
        if self.groups is not None and cfg.locator_loss:
            # Assumption (spec §4.3 locator_loss): smooth-L1 between each group's base point and every labelled
            # keypoint of that group, weighted and normalised like the keypoint loss.
            gid = torch.empty(self.num_keypoints, dtype=torch.long, device=pos.device)
            for g, ks in enumerate(self.groups):
                gid[ks] = g
            base = raw["bases"][pos][:, gid]                                        # (P, K, 2)
            losses["loss_locator"] = cfg.locator_loss_weight * keypoint_loss(
                base, kp_t, labelled, ctr_t, "smoothl1_ctr_nvis")
        if cfg.kpt_visibility_head:
            # Assumption (spec §4.3 KPT_VIS): BCE of the visibility logit against "labelled" (v > 0), weighted
            # by centerness and normalised by the centerness sum over positives.
            vl = F.binary_cross_entropy_with_logits(raw["kpt_vis_logits"][pos], labelled.to(kp_t.dtype),
                                                    reduction="none").mean(1)
            losses["loss_vis"] = cfg.visibility_loss_weight * (ctr_t * vl).sum() / \
                global_normalizer(ctr_t.sum(), 1e-6)
        if cfg.bbox_branch:
            boxes_t = torch.cat((loc_pos - ltrb[:, :2], loc_pos + ltrb[:, 2:]), 1)
            d = raw["box_ltrb"][pos] * stride_pos[:, None]
            boxes_p = torch.cat((loc_pos - d[:, :2], loc_pos + d[:, 2:]), 1)
            giou = generalized_box_iou_loss(boxes_p, boxes_t, reduction="none")
            losses["loss_box"] = cfg.box_loss_weight * (ctr_t * giou).sum() / \
                global_normalizer(ctr_t.sum(), 1e-6)
        if "heatmap_logits" in raw:
            hm = raw["heatmap_logits"]
            stride = 8 if cfg.hm_level == "p3" else 4
            hm_t = torch.stack([heatmap_targets(t["keypoints"].to(hm).reshape(-1, self.num_keypoints, 3),
                                                hm.shape[-2:], stride, cfg.hm_target, cfg.hm_sigma)
                                for t in targets])
            n_hm = global_normalizer((hm_t == 1).sum())
            losses["loss_hm"] = cfg.hm_weight * sigmoid_focal_loss(
                hm, hm_t, alpha=cfg.focal_alpha, gamma=cfg.focal_gamma, reduction="sum") / n_hm
        losses["num_pos"] = pos.sum().detach().float()
        return losses
