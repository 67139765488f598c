"""DirectPose (Tian, Chen, Shen, arXiv:1911.07451): one-stage keypoint regression on FCOS with KPAlign.

FCOS on a ResNet-FPN (P3-P7) whose box output is replaced by 2K keypoint offsets per location: a location
that FCOS assigns to a person regresses all K keypoints of that person relative to itself. Person score =
sqrt(classification x centerness); the only post-processing is NMS. Three additions make it work (spec §1):
KPAlign (a locator picks one point per keypoint group, features sampled there on a finer map feed the
keypoint predictor), grouped KPAlign with separate per-group feature streams, and an auxiliary keypoint
heatmap branch used in training only.

No official code exists. ``../shared/reference/directpose/spec.md`` is the authority; choices the spec marks
as assumptions (or that it leaves open) are flagged ``# Assumption (spec §x): ...`` here.

Layout: config -> backbone/FPN -> heads (classification, naive keypoint, KPAlign, box, heatmap) -> target
assignment (FCOS) -> losses -> decode -> the model -> transform -> registration.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms, generalized_box_iou_loss, sigmoid_focal_loss

from ..config import ConfigError
from ..structures import PoseResult
from .backbones import BackboneConfig, build_backbone
from .base import PoseModel
from .layers.distributed import global_normalizer
from .necks import FPN
from .registry import MethodSpec, register_method

__all__ = [
    "DirectPoseConfig", "DirectPose", "build_directpose", "directpose_transform", "DirectPoseSample", "COCO_KPALIGN_GROUPS",
    "resolve_keypoint_groups", "KPAlignHead", "NaiveKeypointHead", "HeatmapHead",
    "NUM_LEVELS", "compute_locations", "fcos_assign", "keypoint_loss", "heatmap_targets", "decode_candidates",
]

INF = 1e8
NUM_LEVELS = 5                      # P3-P7, strides 8..128 (spec §2)

#: The 9 KPAlign keypoint groups on COCO-17 (spec §4.3; identical in both public implementations).
COCO_KPALIGN_GROUPS: tuple[tuple[int, ...], ...] = (
    (0, 1, 2, 3, 4),   # face: nose, eyes, ears
    (5,),              # l_shoulder
    (7, 9),            # l_elbow, l_wrist
    (6,),              # r_shoulder
    (8, 10),           # r_elbow, r_wrist
    (11,),             # l_hip
    (13, 15),          # l_knee, l_ankle
    (12,),             # r_hip
    (14, 16),          # r_knee, r_ankle
)


# ==========================================================================================================
# Config
# ==========================================================================================================
@dataclass
class DirectPoseConfig:
    """Every knob of DirectPose; defaults are the paper's best setting (spec §9)."""
    num_keypoints: int = 17

    # --- backbone / neck (spec §2) ---
    # C3-C5 (strides 8, 16, 32) feed the FPN. Assumption (spec §2): the FCOS / detectron2 defaults, FrozenBN and
    # FREEZE_AT = 2 (stem + res2).
    backbone: BackboneConfig = field(default_factory=lambda: BackboneConfig("resnet50", norm="frozen_bn",
                                                                            freeze_at=2))
    fpn_channels: int = 256                    # P3-P7; P6/P7 from P5 (FCOS "TOP_LEVELS = 2")

    # --- shared head shape ---
    head_channels: int = 256                   # cls / box towers, naive and non-separate keypoint towers
    num_convs: int = 4                         # convs per tower
    use_scale: bool = False                    # per-level learnable scale on regression outputs (§4.1)
    # Assumption (spec §4.1): centerness on the keypoint tower, as in the only published DirectPose config.
    ctr_on: Literal["cls", "kpt"] = "kpt"      # which tower feeds centerness

    # --- keypoint head (spec §4.2-4.3) ---
    head: Literal["kpalign", "naive"] = "kpalign"
    kpalign_groups: int = 9                    # 9 (spec table) / K (one group per keypoint) / 1
    keypoint_groups: list[list[int]] = field(default_factory=list)  # explicit partition (overrides the above)
    separate_feats: bool = True                # per-group feature streams (grouped convs)
    group_channels: int = 64                   # channels per group stream
    sample_level: Literal["lower", "lower_face_p3", "same"] = "lower"
    locator_loss: bool = False                 # direct supervision of the locator's base points
    locator_loss_weight: float = 1.0
    kpt_visibility_head: bool = False          # extra per-keypoint visibility logit ([GCV] KPT_VIS)
    predictor_init: Literal["normal", "kaiming_uniform"] = "normal"

    # --- auxiliary heatmap branch, training only (spec §4.4) ---
    heatmap_aux: bool = True
    hm_weight: float = 4.0
    hm_target: Literal["binary", "gaussian"] = "binary"
    hm_level: Literal["p3", "p3_upsampled"] = "p3"   # stride-8 heatmap, or stride 4 (P3 tower upsampled x2)
    hm_channels: int = 128
    hm_num_convs: int = 2
    hm_sigma: float = 1.0                      # gaussian targets only, in heatmap cells

    # --- optional FCOS box branch (spec §4.5) ---
    bbox_branch: bool = False
    box_loss_weight: float = 1.0

    # --- FCOS assignment (spec §3) ---
    sizes_of_interest: list[float] = field(default_factory=lambda: [64.0, 128.0, 256.0, 512.0])
    center_sampling_radius: float = 1.5        # 0 disables center sampling (inside the box instead)
    assign_box: Literal["gt_box", "keypoint_box"] = "gt_box"     # spec default [MB]; [GCV] keypoint boxes

    # --- losses (spec §5) ---
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    kpt_loss: Literal["l1_ctr", "smoothl1_ctr_nvis"] = "l1_ctr"   # spec default [MB]; [GCV] uses smooth-L1
    kpt_loss_weight: float = 1.0
    visibility_loss_weight: float = 1.0

    # --- inference (spec §7) ---
    pre_nms_thresh: float = 0.05               # on sigmoid(cls), before centerness
    pre_nms_topk: int = 1000                   # per level, by cls x ctr
    nms_iou: float = 0.6
    nms_box: Literal["auto", "keypoints", "box"] = "auto"   # auto: predicted box if bbox_branch else extent

    # --- input normalisation (augmentation lives in data.augment.onestage) ---
    # Assumption (spec §2): timm / torchvision ImageNet weights expect RGB with ImageNet mean/std, not
    # detectron2's BGR MSRA convention, so that is the default normalisation.
    pixel_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    pixel_std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __post_init__(self):
        if self.num_keypoints < 1:
            raise ConfigError(f"model.num_keypoints: expected a positive int, got {self.num_keypoints}")
        if len(self.sizes_of_interest) != NUM_LEVELS - 1 or sorted(self.sizes_of_interest) != list(
                self.sizes_of_interest):
            raise ConfigError(f"model.sizes_of_interest: expected {NUM_LEVELS - 1} increasing level boundaries "
                              f"(P3..P7), got {self.sizes_of_interest}")
        if self.separate_feats and self.group_channels % 4:
            raise ConfigError(f"model.group_channels: expected a multiple of 4 (GroupNorm with 4 channels per "
                              f"group), got {self.group_channels}")
        if self.nms_box == "box" and not self.bbox_branch:
            raise ConfigError("model.nms_box: 'box' needs model.bbox_branch: true")
        resolve_keypoint_groups(self)  # validates the grouping


def resolve_keypoint_groups(cfg: DirectPoseConfig) -> list[list[int]]:
    """The KPAlign keypoint partition: explicit ``keypoint_groups``, or the preset ``kpalign_groups`` names."""
    K = cfg.num_keypoints
    if cfg.keypoint_groups:
        groups = [list(g) for g in cfg.keypoint_groups]
        flat = sorted(k for g in groups for k in g)
        if flat != list(range(K)) or any(not g for g in groups):
            raise ConfigError(f"model.keypoint_groups: expected a partition of keypoints 0..{K - 1} into non-empty "
                              f"groups, got {cfg.keypoint_groups}")
        return groups
    if cfg.kpalign_groups == 1:
        return [list(range(K))]
    if cfg.kpalign_groups == K:
        return [[k] for k in range(K)]
    if cfg.kpalign_groups == 9 and K == 17:
        return [list(g) for g in COCO_KPALIGN_GROUPS]
    raise ConfigError(f"model.kpalign_groups: expected 1, {K} or (COCO-17) 9, got {cfg.kpalign_groups}; "
                      f"set model.keypoint_groups to an explicit partition for other layouts")


# ==========================================================================================================
# Heads (spec §4)
# ==========================================================================================================
def _tower(in_ch: int, width: int, num_convs: int, *, groups: int = 1, gn_groups: int = 32) -> nn.Sequential:
    """``num_convs`` x [3x3 conv, GroupNorm, ReLU]; the first conv is dense, the rest use ``groups``.
    Modules are named conv<i> / gn<i> so parameter-name rules can find the norms (no weight decay on GN)."""
    layers: dict[str, nn.Module] = {}
    for i in range(num_convs):
        layers[f"conv{i}"] = nn.Conv2d(in_ch if i == 0 else width, width, 3, padding=1,
                                       groups=1 if i == 0 else groups)
        layers[f"gn{i}"] = _group_norm(width, gn_groups)
        layers[f"relu{i}"] = nn.ReLU(inplace=True)
    return nn.Sequential(OrderedDict(layers))


def _group_norm(width: int, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm(groups) as the spec says (GN(32) on 256 channels); narrow (test / synthetic) heads keep at
    least 2 channels per group so 1x1 maps (P7 of small images) still normalise over more than one value."""
    return nn.GroupNorm(max(1, min(groups, width // 2)), width)


def _normal_init(module: nn.Module, std: float = 0.01) -> None:
    """FCOS head init: N(0, std) weights, zero biases, for every conv in ``module``."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _prior_bias(prob: float = 0.01) -> float:
    return -math.log((1 - prob) / prob)


class Scale(nn.Module):
    """A learnable scalar per FPN level (FCOS ``Scale``), off by default (spec §4.1)."""

    def __init__(self, init: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x):
        return x * self.scale


class NaiveKeypointHead(nn.Module):
    """Ablation baseline (spec §4.2): FCOS box branch with 2K outputs, offsets in stride units."""

    def __init__(self, in_ch: int, width: int, num_convs: int, num_keypoints: int, visibility: bool):
        super().__init__()
        self.K = num_keypoints
        self.visibility = visibility
        self.tower = _tower(in_ch, width, num_convs)
        self.pred = nn.Conv2d(width, (3 if visibility else 2) * num_keypoints, 3, padding=1)
        self.out_channels = width
        _normal_init(self)

    def forward(self, feats, scales):
        """-> towers [(N,C,H,W)], offsets [(N,K,2,H,W)], bases [None], vis [(N,K,H,W) | None]."""
        towers, offsets, vis = [], [], []
        for l, f in enumerate(feats):
            t = self.tower(f)
            p = self.pred(t)
            n, _, h, w = p.shape
            p = p.view(n, self.K, 3 if self.visibility else 2, h, w)
            o = p[:, :, :2]
            if scales is not None:
                o = scales[l](o)
            towers.append(t)
            offsets.append(o)
            vis.append(p[:, :, 2] if self.visibility else None)
        return towers, offsets, [None] * len(feats), vis


class KPAlignHead(nn.Module):
    """Keypoint alignment (spec §4.3): locator -> sampler -> predictor, per keypoint group.

    * tower: with separate feature maps, one dense conv to G*c channels then grouped convs (groups = G), so
      every group keeps its own c-channel stream; otherwise a standard 256-channel tower.
    * locator: one base point b_g per group per location (stride units, relative to the location).
    * sampler: a conv + GN + ReLU feature map on every level; it is read at the located points on a finer
      level (``sample_level``), by bilinear interpolation with zero padding.
    * predictor: per group, a linear layer (a single-tap 1x1 deformable conv in the public code) from the
      sampled feature to the group's keypoint offsets delta (finer-map pixels): o_k = b_g + delta_k / r.
    """

    def __init__(self, in_ch: int, groups: list[list[int]], *, separate_feats: bool, group_channels: int,
                 head_channels: int, num_convs: int, sample_level: str, num_levels: int, visibility: bool,
                 predictor_init: str):
        super().__init__()
        self.groups = [list(g) for g in groups]
        G = len(groups)
        self.G = G
        self.separate = separate_feats
        self.visibility = visibility
        self.sample_level = sample_level
        self.num_levels = num_levels
        if separate_feats:
            width = G * group_channels
            gn = width // 4                    # 4 channels per GN group: never straddles two group streams
            self.tower = _tower(in_ch, width, num_convs, groups=G, gn_groups=gn)
            self.locator = nn.Conv2d(width, 2 * G, 3, padding=1, groups=G)
            self.sampler = nn.Sequential(OrderedDict(conv=nn.Conv2d(width, width, 3, padding=1, groups=G),
                                                     gn=nn.GroupNorm(gn, width), relu=nn.ReLU(inplace=True)))
            pred_in = group_channels
        else:
            # Assumption (spec §4.3): with separate_feats off the tower, locator and sampler are ordinary
            # (ungrouped) 256-channel convs and every group samples the same shared sampler map.
            width = head_channels
            self.tower = _tower(in_ch, width, num_convs)
            self.locator = nn.Conv2d(width, 2 * G, 3, padding=1)
            self.sampler = nn.Sequential(OrderedDict(conv=nn.Conv2d(width, width, 3, padding=1),
                                                     gn=_group_norm(width), relu=nn.ReLU(inplace=True)))
            pred_in = width
        self.out_channels = width
        self.group_channels = pred_in
        per_kpt = 3 if visibility else 2
        self.predictors = nn.ModuleList(nn.Conv2d(pred_in, per_kpt * len(g), 1) for g in groups)
        _normal_init(self)
        if predictor_init == "kaiming_uniform":     # [GCV]'s init; [MB] (default) uses N(0, 0.01)
            for p in self.predictors:
                nn.init.kaiming_uniform_(p.weight, a=1)
        order = torch.tensor([k for g in groups for k in g])
        self.register_buffer("inv_order", torch.argsort(order), persistent=False)  # group order -> keypoints

    def _source(self, level: int, group: int) -> int:
        """Which level's sampler map group ``group`` reads when predicting on ``level``."""
        if self.sample_level == "same":
            return level
        if self.sample_level == "lower_face_p3" and group == 0:
            return 0                                    # [MB]: the face group always samples P3
        return max(level - 1, 0)                        # [GCV] default: the next finer level (P3 reads itself)

    def forward(self, feats, scales):
        """-> towers [(N,C,H,W)], offsets [(N,K,2,H,W)], bases [(N,G,2,H,W)], vis [(N,K,H,W) | None]."""
        towers = [self.tower(f) for f in feats]
        samplers = [self.sampler(t) for t in towers]           # computed on every level (spec §4.3)
        offsets, bases, vis = [], [], []
        for l, t in enumerate(towers):
            n, _, h, w = t.shape
            b = self.locator(t)
            if scales is not None:
                # Assumption (spec §4.1): use_scale multiplies the locator output (the coarse offset).
                b = scales[l](b)
            b = b.view(n, self.G, 2, h, w)                     # (N, G, 2, H, W), stride units
            # Group the groups by the map they read (one map unless lower_face_p3).
            plan: dict[int, list[int]] = {}
            for g in range(self.G):
                plan.setdefault(self._source(l, g), []).append(g)
            sampled: list[torch.Tensor | None] = [None] * self.G
            ratios = [1] * self.G
            for src, gs in plan.items():
                r = 2 ** (l - src)                              # stride ratio s_l / s_src
                feats_g = self._sample(samplers[src], b[:, gs], r, gs)   # (N, len(gs), C, H, W)
                for i, g in enumerate(gs):
                    sampled[g] = feats_g[:, i]
                    ratios[g] = r
            outs, vis_l = [], []
            for g, pred in enumerate(self.predictors):
                d = pred(sampled[g]).view(n, len(self.groups[g]), 3 if self.visibility else 2, h, w)
                outs.append(b[:, g, None] + d[:, :, :2] / ratios[g])    # o_k = b_g + delta_k / r
                if self.visibility:
                    vis_l.append(d[:, :, 2])
            offsets.append(torch.cat(outs, 1).index_select(1, self.inv_order))       # (N, K, 2, H, W)
            vis.append(torch.cat(vis_l, 1).index_select(1, self.inv_order) if self.visibility else None)
            bases.append(b)
        return towers, offsets, bases, vis

    def _sample(self, fmap: torch.Tensor, b: torch.Tensor, r: int, gs: list[int]) -> torch.Tensor:
        """Bilinearly sample ``fmap`` (N, C, Hm, Wm) at the located points of groups ``gs``.

        Output cell (i, j) reads finer-map pixel (u, v) = (j r + floor(r/2) + r b_x, i r + floor(r/2) + r b_y)
        (both public codebases use floor(r/2), not the exact (r-1)/2). Zero padding outside the map equals the
        official "pad the finer map on the right/bottom" followed by a deformable-conv tap.
        b: (N, g, 2, H, W) -> (N, g, C', H, W) with C' the group channels (separate maps) or C (shared map).
        """
        n, ng, _, h, w = b.shape
        hm, wm = fmap.shape[-2:]
        j = torch.arange(w, device=b.device, dtype=b.dtype) * r + r // 2
        i = torch.arange(h, device=b.device, dtype=b.dtype) * r + r // 2
        u = j + r * b[:, :, 0]                                  # (N, g, H, W) pixel x on the finer map
        v = i[:, None] + r * b[:, :, 1]
        # align_corners=False: pixel index u sits at (2u + 1) / W - 1 (exact for any map size, even 1 px).
        grid = torch.stack(((2 * u + 1) / wm - 1, (2 * v + 1) / hm - 1), dim=-1)   # (N, g, H, W, 2)
        if self.separate:
            c = fmap.shape[1] // self.G
            src = fmap.view(n, self.G, c, hm, wm)[:, gs].reshape(n * ng, c, hm, wm)
            out = F.grid_sample(src, grid.reshape(n * ng, h, w, 2), mode="bilinear", padding_mode="zeros",
                                align_corners=False)
            return out.view(n, ng, c, h, w)
        out = F.grid_sample(fmap, grid.reshape(n, ng * h, w, 2), mode="bilinear", padding_mode="zeros",
                            align_corners=False)                # (N, C, g*H, W)
        return out.view(n, -1, ng, h, w).transpose(1, 2)


class HeatmapHead(nn.Module):
    """Auxiliary keypoint heatmaps on P3 (spec §4.4): 2 x [3x3 conv, GN(32), ReLU] at 128 channels, then a
    3x3 conv to K one-vs-all logits with the focal prior bias. Training only."""

    def __init__(self, in_ch: int, channels: int, num_convs: int, num_keypoints: int, upsample: bool):
        super().__init__()
        self.tower = _tower(in_ch, channels, num_convs)
        self.pred = nn.Conv2d(channels, num_keypoints, 3, padding=1)
        self.upsample = upsample
        _normal_init(self)
        nn.init.constant_(self.pred.bias, _prior_bias())

    def forward(self, p3: torch.Tensor) -> torch.Tensor:
        x = self.tower(p3)
        if self.upsample:
            # Assumption (spec §4.4 "P2-upsampled"): a stride-4 heatmap from the P3 tower upsampled x2.
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.pred(x)


# ==========================================================================================================
# FCOS locations and target assignment (spec §3)
# ==========================================================================================================
def compute_locations(h: int, w: int, stride: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Image points of the cells of an (h, w) level: (floor(s/2) + j s, floor(s/2) + i s) -> (h*w, 2)."""
    xs = torch.arange(w, device=device, dtype=dtype) * stride + stride // 2
    ys = torch.arange(h, device=device, dtype=dtype) * stride + stride // 2
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((xx.reshape(-1), yy.reshape(-1)), dim=1)


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


# ==========================================================================================================
# Losses (spec §5). Every count a loss divides by is that of the global batch (FCOS: summed across GPUs /
# num_gpus, see layers/distributed.py), so results do not depend on the number of processes.
# ==========================================================================================================
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


# ==========================================================================================================
# Decode (spec §7)
# ==========================================================================================================
def decode_candidates(out: dict, index: int, image_hw: tuple[int, int], cfg: DirectPoseConfig) -> dict:
    """Per-level thresholding and top-k for image ``index`` of a raw eval output (before NMS).

    Keeps locations with sigmoid(cls) > pre_nms_thresh (before centerness), at most pre_nms_topk per level by
    cls x ctr; score = sqrt(cls x ctr). Returns scores (n,), keypoints (n, K, 3) in input pixels (third
    column: per-keypoint confidence = the instance score, or x sigmoid(visibility)) and NMS boxes (n, 4).
    """
    strides = out["strides"]
    cls = out["cls_logits"][index].sigmoid()
    ctr = out["ctr_logits"][index].sigmoid()
    # Level boundaries from the per-location strides (constant within a level, increasing across levels).
    _, counts = torch.unique_consecutive(strides, return_counts=True)
    keep_idx = []
    start = 0
    for cnt in counts.tolist():
        p = cls[start:start + cnt]
        cand = torch.nonzero(p > cfg.pre_nms_thresh).squeeze(1)
        if cand.numel() > cfg.pre_nms_topk:
            top = (p[cand] * ctr[start + cand]).topk(cfg.pre_nms_topk).indices
            cand = cand[top]
        keep_idx.append(cand + start)
        start += cnt
    idx = torch.cat(keep_idx)
    scores = torch.sqrt(cls[idx] * ctr[idx])
    kp = out["keypoints"][index, idx]                                       # (n, K, 2)
    conf = scores[:, None].expand(-1, kp.shape[1])
    if "kpt_vis_logits" in out:
        conf = conf * out["kpt_vis_logits"][index, idx].sigmoid()
    h, w = image_hw
    ext = torch.cat((kp.min(1).values, kp.max(1).values), 1)
    ext = torch.stack((ext[:, 0].clamp(0, w), ext[:, 1].clamp(0, h), ext[:, 2].clamp(0, w), ext[:, 3].clamp(0, h)), 1)
    boxes = ext
    if "boxes" in out:
        b = out["boxes"][index, idx]
        boxes = torch.stack((b[:, 0].clamp(0, w), b[:, 1].clamp(0, h), b[:, 2].clamp(0, w), b[:, 3].clamp(0, h)), 1)
    use_pred = cfg.nms_box == "box" or (cfg.nms_box == "auto" and "boxes" in out)
    return {"scores": scores, "keypoints": torch.cat((kp, conf[..., None]), 2),
            "nms_boxes": boxes if use_pred else ext, "boxes": boxes}


def _apply_affine(xy: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """(..., 2) points through a (2, 3) affine."""
    return xy @ A[:, :2].T + A[:, 2]


# ==========================================================================================================
# The model
# ==========================================================================================================
class DirectPose(PoseModel):
    """FCOS + keypoint head (naive or KPAlign) + optional box branch + training-only heatmap branch."""

    size_divisibility = 32   # detectron2 FPN: the coarsest backbone stride; P6/P7 round up

    def __init__(self, cfg: DirectPoseConfig, flip_index: list[int] | None = None):
        super().__init__()
        self.cfg = cfg
        self.num_keypoints = K = cfg.num_keypoints
        if flip_index is None:      # default keypoint layout: COCO-17 when the count fits
            flip_index = _flip_index_for("coco", K)
        self.flip_index = [int(i) for i in flip_index] if flip_index is not None else None
        self.backbone = build_backbone(cfg.backbone, (2, 3, 4))
        C = cfg.fpn_channels
        # detectron2 FPN on C3-C5 + FCOS top block (P6 = conv/2 on P5, P7 = conv/2 on ReLU(P6)), spec §2.
        self.fpn = FPN(self.backbone.channels, C, top_block="p6p7", top_block_in="p5")
        self.num_levels = L = NUM_LEVELS
        self.strides = [8 * 2 ** l for l in range(L)]
        soi = [-1.0] + [float(s) for s in cfg.sizes_of_interest] + [INF]
        self.size_ranges = [(soi[l], soi[l + 1]) for l in range(L)]

        # FCOS classification tower (+ centerness when ctr_on = cls), shared across levels.
        self.cls_tower = _tower(C, cfg.head_channels, cfg.num_convs)
        self.cls_logits = nn.Conv2d(cfg.head_channels, 1, 3, padding=1)
        if cfg.head == "kpalign":
            self.kpt_head = KPAlignHead(
                C, resolve_keypoint_groups(cfg), separate_feats=cfg.separate_feats,
                group_channels=cfg.group_channels, head_channels=cfg.head_channels, num_convs=cfg.num_convs,
                sample_level=cfg.sample_level, num_levels=L, visibility=cfg.kpt_visibility_head,
                predictor_init=cfg.predictor_init)
        else:
            self.kpt_head = NaiveKeypointHead(C, cfg.head_channels, cfg.num_convs, K, cfg.kpt_visibility_head)
        ctr_in = cfg.head_channels if cfg.ctr_on == "cls" else self.kpt_head.out_channels
        self.ctr_pred = nn.Conv2d(ctr_in, 1, 3, padding=1)
        self.scales = nn.ModuleList(Scale() for _ in range(L)) if cfg.use_scale else None
        if cfg.bbox_branch:
            self.box_tower = _tower(C, cfg.head_channels, cfg.num_convs)
            self.box_pred = nn.Conv2d(cfg.head_channels, 4, 3, padding=1)
            self.box_scales = nn.ModuleList(Scale() for _ in range(L)) if cfg.use_scale else None
        self.heatmap_head = (HeatmapHead(C, cfg.hm_channels, cfg.hm_num_convs, K, cfg.hm_level == "p3_upsampled")
                             if cfg.heatmap_aux else None)
        for m in (self.cls_tower, self.cls_logits, self.ctr_pred) + ((self.box_tower, self.box_pred)
                                                                    if cfg.bbox_branch else ()):
            _normal_init(m)
        nn.init.constant_(self.cls_logits.bias, _prior_bias())

    # ------------------------------------------------------------------ network
    def _network(self, images: torch.Tensor, with_heatmap: bool) -> dict:
        """Raw per-location outputs, levels concatenated (P3 first, row-major within a level)."""
        feats = self.fpn(self.backbone(images)[-3:])
        cls_t = [self.cls_tower(f) for f in feats]
        kpt_t, offsets, bases, vis = self.kpt_head(feats, self.scales)
        ctr_src = cls_t if self.cfg.ctr_on == "cls" else kpt_t

        def flat(xs):  # [(N, C..., H, W)] -> (N, sum HW, C...); explicit positive perm (ONNX-friendly)
            xs = [x.flatten(-2) for x in xs]
            d = xs[0].dim()
            return torch.cat([x.permute(0, d - 1, *range(1, d - 1)) for x in xs], 1)

        out = {
            "cls_logits": flat([self.cls_logits(t) for t in cls_t]).squeeze(2),     # (N, L)
            "ctr_logits": flat([self.ctr_pred(t) for t in ctr_src]).squeeze(2),     # (N, L)
            "offsets": flat(offsets),                                               # (N, L, K, 2) stride units
        }
        locs, strides = [], []
        for l, f in enumerate(feats):
            h, w = f.shape[-2:]
            s = self.strides[l]
            locs.append(compute_locations(h, w, s, images.device, images.dtype))
            strides.append(torch.full((h * w,), float(s), device=images.device, dtype=images.dtype))
        out["locations"] = torch.cat(locs)                                          # (L, 2)
        out["strides"] = torch.cat(strides)                                         # (L,)
        if self.cfg.kpt_visibility_head:
            out["kpt_vis_logits"] = flat(vis)                                       # (N, L, K)
        if self.cfg.head == "kpalign":
            out["bases"] = flat(bases)                                              # (N, L, G, 2)
        if self.cfg.bbox_branch:
            regs = []
            for l, f in enumerate(feats):
                r = self.box_pred(self.box_tower(f))
                if self.box_scales is not None:
                    r = self.box_scales[l](r)
                regs.append(F.relu(r))
            out["box_ltrb"] = flat(regs)                                            # (N, L, 4) stride units
        if with_heatmap and self.heatmap_head is not None:
            out["heatmap_logits"] = self.heatmap_head(feats[0])                     # (N, K, H/8, W/8)
        return out

    def forward(self, images: torch.Tensor, targets: list[dict] | None = None):
        if self.training and targets is not None:
            return self.losses(self._network(images, with_heatmap=True), targets, images.shape[-2:])
        raw = self._network(images, with_heatmap=False)
        s = raw["strides"][None, :, None, None]
        out = {
            "cls_logits": raw["cls_logits"],
            "ctr_logits": raw["ctr_logits"],
            "keypoints": raw["locations"][None, :, None] + s * raw["offsets"],      # (N, L, K, 2) input px
            "strides": raw["strides"],
        }
        if "kpt_vis_logits" in raw:
            out["kpt_vis_logits"] = raw["kpt_vis_logits"]
        if "box_ltrb" in raw:
            loc = raw["locations"][None]
            d = raw["box_ltrb"] * raw["strides"][None, :, None]
            out["boxes"] = torch.cat((loc - d[..., :2], loc + d[..., 2:]), -1)      # (N, L, 4) xyxy input px
        return out

    # ------------------------------------------------------------------ training
    def assign(self, raw: dict, targets: list[dict], image_hw) -> dict:
        """FCOS assignment for every image; returns per-location targets for the whole batch."""
        locs, strides = raw["locations"], raw["strides"]
        ranges = torch.tensor(self.size_ranges, device=locs.device, dtype=locs.dtype)
        level_of = torch.log2(strides / self.strides[0]).round().long()
        size_ranges = ranges[level_of]                                              # (L, 2)
        K = self.num_keypoints
        pos, ltrb, kps = [], [], []
        for t in targets:
            boxes = t["boxes"].to(locs).reshape(-1, 4)
            kp = t["keypoints"].to(locs).reshape(-1, K, 3)
            if self.cfg.assign_box == "keypoint_box":
                hw = tuple(int(v) for v in t["size"]) if "size" in t else tuple(image_hw)
                boxes, keep = keypoint_boxes(kp, hw)
                kp = kp[keep]
            matched, d = fcos_assign(locs, strides, size_ranges, boxes, self.cfg.center_sampling_radius)
            pos.append(matched >= 0)
            ltrb.append(d)
            kps.append(kp[matched.clamp(min=0)] if len(kp) else kp.new_zeros((len(locs), K, 3)))
        return {"pos": torch.stack(pos), "ltrb": torch.stack(ltrb), "keypoints": torch.stack(kps)}

    def losses(self, raw: dict, targets: list[dict], image_hw) -> dict:
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
        if cfg.head == "kpalign" and cfg.locator_loss:
            # Assumption (spec §4.3 locator_loss): smooth-L1 between each group's base point and every labelled
            # keypoint of that group, weighted and normalised like the keypoint loss.
            groups = self.kpt_head.groups
            gid = torch.empty(self.num_keypoints, dtype=torch.long, device=pos.device)
            for g, ks in enumerate(groups):
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

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict(self, batch: dict, test_cfg) -> list[PoseResult]:
        """People per image in original pixels: candidates from every (scale, flip) variant are pooled, then one
        class-agnostic NMS (spec §7), top ``max_people``, then ``score_threshold``.

        Assumption (spec §7): the paper's multi-scale test merge rule is unknown; we pool all candidates and run
        one NMS. The flip test is our extension (the paper reports none); it is off by default.
        """
        images = batch["images"]
        metas = batch["metas"]
        N, _, H, W = images.shape
        scales = list(getattr(test_cfg, "scales", [1.0]) or [1.0])
        flips = [False, True] if getattr(test_cfg, "flip", False) else [False]
        if True in flips and self.flip_index is None:
            raise ConfigError("test.flip: this model has no keypoint flip pairs (build it from a config whose "
                              "data.format names the keypoint layout)")
        sizes = [tuple(int(v) for v in m.get("input_size", (H, W))) for m in metas]
        pooled: list[list[dict]] = [[] for _ in range(N)]
        for s in scales:
            x = images
            if s != 1.0:
                h, w = int(round(H * s / 32)) * 32 or 32, int(round(W * s / 32)) * 32 or 32
                x = F.interpolate(images, size=(h, w), mode="bilinear", align_corners=False)
            sy, sx = x.shape[-2] / H, x.shape[-1] / W
            for flip in flips:
                xin = x.flip(-1) if flip else x
                out = self(xin)
                for i in range(N):
                    hw = (sizes[i][0] * sy, sizes[i][1] * sx)
                    c = decode_candidates(out, i, hw, self.cfg)
                    kp, boxes, nms_boxes = c["keypoints"], c["boxes"], c["nms_boxes"]
                    if flip:
                        # Image flipped as a whole padded tensor: x -> W' - x, boxes swap x0/x1, left/right swap.
                        Wf = xin.shape[-1]
                        kp = kp[:, self.flip_index].clone()
                        kp[..., 0] = Wf - kp[..., 0]
                        boxes = torch.stack((Wf - boxes[:, 2], boxes[:, 1], Wf - boxes[:, 0], boxes[:, 3]), 1)
                        nms_boxes = torch.stack((Wf - nms_boxes[:, 2], nms_boxes[:, 1], Wf - nms_boxes[:, 0],
                                                 nms_boxes[:, 3]), 1)
                    sc = torch.tensor([sx, sy, sx, sy], dtype=kp.dtype, device=kp.device)
                    kp = kp.clone()
                    kp[..., :2] = kp[..., :2] / sc[:2]
                    pooled[i].append({"scores": c["scores"], "keypoints": kp, "boxes": boxes / sc,
                                      "nms_boxes": nms_boxes / sc})
        results = []
        max_people = int(getattr(test_cfg, "max_people", 100))
        thr = float(getattr(test_cfg, "score_threshold", 0.0))
        for i in range(N):
            cat = {k: torch.cat([p[k] for p in pooled[i]]) for k in pooled[i][0]}
            keep = batched_nms(cat["nms_boxes"], cat["scores"], torch.zeros_like(cat["scores"], dtype=torch.long),
                               self.cfg.nms_iou)[:max_people]
            keep = keep[cat["scores"][keep] > thr] if thr > 0 else keep
            results.append(self._to_original(cat["keypoints"][keep], cat["boxes"][keep], cat["scores"][keep],
                                             metas[i]))
        return results

    def _to_original(self, kp: torch.Tensor, boxes: torch.Tensor, scores: torch.Tensor, meta: dict) -> PoseResult:
        """Network-input continuous coordinates -> original pixels through meta['inverse'] (a pixel-index affine):
        keypoints become pixel indices (-0.5, the inverse of the transform's +0.5); boxes stay continuous (the
        extent of their mapped corners)."""
        A = torch.as_tensor(np.asarray(meta.get("inverse", np.eye(2, 3)), dtype=np.float64), device=kp.device)
        A = A.reshape(2, 3)
        xy = _apply_affine(kp[..., :2].double() - 0.5, A)
        corners = torch.stack((boxes[:, [0, 1]], boxes[:, [2, 1]], boxes[:, [0, 3]], boxes[:, [2, 3]]), 1)
        c = _apply_affine(corners.double() - 0.5, A) + 0.5
        b = torch.cat((c.min(1).values, c.max(1).values), 1)
        kpo = torch.cat((xy, kp[..., 2:].double()), -1)
        return PoseResult(b.float().cpu().numpy(), kpo.float().cpu().numpy(), scores.float().cpu().numpy())


# ==========================================================================================================
# Transform, builder, registration
# ==========================================================================================================
def _flip_index_for(data_format: str, num_keypoints: int) -> list[int] | None:
    try:
        from ..data import keypoints as kpmeta  # written by the data layer
    except ImportError:
        return None
    fn = getattr(kpmeta, "flip_index", None)
    if fn is None:
        return None
    idx = list(fn(data_format))
    return idx if len(idx) == num_keypoints else None


def build_directpose(cfg) -> DirectPose:
    """Build DirectPose from a full :class:`regpose.config.Config` (or a bare :class:`DirectPoseConfig`)."""
    mcfg = cfg.model if hasattr(cfg, "model") else cfg
    fmt = getattr(getattr(cfg, "data", None), "format", "coco")
    return DirectPose(mcfg, _flip_index_for(fmt, mcfg.num_keypoints))


class DirectPoseSample:
    """Raw sample -> {"image", "target", "meta"} for DirectPose (picklable for data-loader workers).

    Geometry: the one-stage pipeline of :mod:`regpose.data.transforms` from ``cfg.data.augment.onestage``
    (train: flip with keypoint swap, multi-scale short side, optional crop; test: one short side). Image: RGB
    ``(x / 255 - mean) / std``. Target (network-input pixels): ``boxes`` (M, 4) xyxy, ``keypoints`` (M, K, 3)
    in continuous coordinates (pixel index + 0.5, detectron2's convention, which the FCOS locations
    floor(s/2) + j s and the public DirectPose code use; unlabelled keypoints are 0), ``size`` (h, w).
    """

    def __init__(self, geometric, pixel_mean, pixel_std):
        self.geometric = geometric
        self.mean = tuple(float(v) for v in pixel_mean)
        self.std = tuple(float(v) for v in pixel_std)

    def __call__(self, raw: dict) -> dict:
        from ..data.transforms import make_meta, to_tensor_normalize

        s = self.geometric(raw)
        image = to_tensor_normalize(s["image"], self.mean, self.std)
        h, w = image.shape[-2:]
        boxes = np.asarray(s["boxes"], dtype=np.float32).reshape(-1, 4)
        kp = np.array(s["keypoints"], dtype=np.float32)      # (M, K, 3); M may be 0 (pictures without labels)
        kp = kp.reshape(len(boxes), kp.shape[-2] if kp.ndim == 3 else -1, 3)
        labelled = kp[..., 2] > 0
        kp[..., :2] = np.where(labelled[..., None], kp[..., :2] + 0.5, 0.0)
        target = {"boxes": torch.from_numpy(boxes), "keypoints": torch.from_numpy(kp),
                  "size": torch.tensor([h, w], dtype=torch.long)}
        return {"image": image, "target": target, "meta": make_meta(s)}


def directpose_transform(cfg, train: bool) -> DirectPoseSample:
    """The one-stage data pipeline (``cfg.data.augment.onestage``) plus DirectPose's target encoding."""
    from ..data.transforms import onestage_test_transforms, onestage_train_transforms

    geo = onestage_train_transforms(cfg.data) if train else onestage_test_transforms(cfg.data)
    return DirectPoseSample(geo, cfg.model.pixel_mean, cfg.model.pixel_std)


register_method(MethodSpec(name="directpose", config_cls=DirectPoseConfig, build=build_directpose,
                           family="onestage", transform=directpose_transform))
