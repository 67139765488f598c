"""DirectPose's heads (spec §4): FCOS towers, the naive keypoint head (ablation baseline), KPAlign (locator ->
sampler -> predictor per keypoint group) and the training-only auxiliary heatmap head."""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Scale", "NaiveKeypointHead", "KPAlignHead", "HeatmapHead", "conv_tower", "normal_init", "prior_bias"]


def conv_tower(in_ch: int, width: int, num_convs: int, *, groups: int = 1, gn_groups: int = 32) -> nn.Sequential:
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


def normal_init(module: nn.Module, std: float = 0.01) -> None:
    """FCOS head init: N(0, std) weights, zero biases, for every conv in ``module``."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def prior_bias(prob: float = 0.01) -> float:
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
        self.tower = conv_tower(in_ch, width, num_convs)
        self.pred = nn.Conv2d(width, (3 if visibility else 2) * num_keypoints, 3, padding=1)
        self.out_channels = width
        normal_init(self)

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
            self.tower = conv_tower(in_ch, width, num_convs, groups=G, gn_groups=gn)
            self.locator = nn.Conv2d(width, 2 * G, 3, padding=1, groups=G)
            self.sampler = nn.Sequential(OrderedDict(conv=nn.Conv2d(width, width, 3, padding=1, groups=G),
                                                     gn=nn.GroupNorm(gn, width), relu=nn.ReLU(inplace=True)))
            pred_in = group_channels
        else:
            # Assumption (spec §4.3): with separate_feats off the tower, locator and sampler are ordinary
            # (ungrouped) 256-channel convs and every group samples the same shared sampler map.
            width = head_channels
            self.tower = conv_tower(in_ch, width, num_convs)
            self.locator = nn.Conv2d(width, 2 * G, 3, padding=1)
            self.sampler = nn.Sequential(OrderedDict(conv=nn.Conv2d(width, width, 3, padding=1),
                                                     gn=_group_norm(width), relu=nn.ReLU(inplace=True)))
            pred_in = width
        self.out_channels = width
        self.group_channels = pred_in
        per_kpt = 3 if visibility else 2
        self.predictors = nn.ModuleList(nn.Conv2d(pred_in, per_kpt * len(g), 1) for g in groups)
        normal_init(self)
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
        self.tower = conv_tower(in_ch, channels, num_convs)
        self.pred = nn.Conv2d(channels, num_keypoints, 3, padding=1)
        self.upsample = upsample
        normal_init(self)
        nn.init.constant_(self.pred.bias, prior_bias())

    def forward(self, p3: torch.Tensor) -> torch.Tensor:
        x = self.tower(p3)
        if self.upsample:
            # Assumption (spec §4.4 "P2-upsampled"): a stride-4 heatmap from the P3 tower upsampled x2.
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.pred(x)
