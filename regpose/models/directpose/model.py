"""The DirectPose network: backbone, FPN (P3-P7), FCOS classification / centerness towers, the keypoint head
(KPAlign or naive), the optional FCOS box branch and the training-only heatmap branch; and its builder."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...data.keypoints import KeypointMeta
from ...structures import PoseResult
from ..backbones import build_backbone
from ..base import PoseModel
from ..necks import FPN
from . import decode
from .config import NUM_LEVELS, DirectPoseConfig, resolve_keypoint_groups
from .heads import HeatmapHead, KPAlignHead, NaiveKeypointHead, Scale, conv_tower, normal_init, prior_bias
from .loss import INF, DirectPoseCriterion

__all__ = ["DirectPose", "build_directpose", "compute_locations"]


def compute_locations(h: int, w: int, stride: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Image points of the cells of an (h, w) level: (floor(s/2) + j s, floor(s/2) + i s) -> (h*w, 2)."""
    xs = torch.arange(w, device=device, dtype=dtype) * stride + stride // 2
    ys = torch.arange(h, device=device, dtype=dtype) * stride + stride // 2
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((xx.reshape(-1), yy.reshape(-1)), dim=1)


class DirectPose(PoseModel):
    """FCOS + keypoint head (naive or KPAlign) + optional box branch + training-only heatmap branch."""

    size_divisibility = 32   # detectron2 FPN: the coarsest backbone stride; P6/P7 round up

    def __init__(self, cfg: DirectPoseConfig, keypoints: KeypointMeta):
        super().__init__()
        self.cfg = cfg
        self.set_keypoints(keypoints)
        K = self.num_keypoints
        self.flip_index = [int(i) for i in keypoints.flip_index]
        self.backbone = build_backbone(cfg.backbone, (2, 3, 4))
        C = cfg.fpn_channels
        # detectron2 FPN on C3-C5 + FCOS top block (P6 = conv/2 on P5, P7 = conv/2 on ReLU(P6)), spec §2.
        self.fpn = FPN(self.backbone.channels, C, top_block="p6p7", top_block_in="p5")
        self.num_levels = L = NUM_LEVELS
        self.strides = [8 * 2 ** l for l in range(L)]
        soi = [-1.0] + [float(s) for s in cfg.sizes_of_interest] + [INF]
        self.size_ranges = [(soi[l], soi[l + 1]) for l in range(L)]

        # FCOS classification tower (+ centerness when ctr_on = cls), shared across levels.
        self.cls_tower = conv_tower(C, cfg.head_channels, cfg.num_convs)
        self.cls_logits = nn.Conv2d(cfg.head_channels, 1, 3, padding=1)
        if cfg.head == "kpalign":
            self.kpt_head = KPAlignHead(
                C, resolve_keypoint_groups(cfg, keypoints), separate_feats=cfg.separate_feats,
                group_channels=cfg.group_channels, head_channels=cfg.head_channels, num_convs=cfg.num_convs,
                sample_level=cfg.sample_level, num_levels=L, visibility=cfg.kpt_visibility_head,
                predictor_init=cfg.predictor_init)
        else:
            self.kpt_head = NaiveKeypointHead(C, cfg.head_channels, cfg.num_convs, K, cfg.kpt_visibility_head)
        ctr_in = cfg.head_channels if cfg.ctr_on == "cls" else self.kpt_head.out_channels
        self.ctr_pred = nn.Conv2d(ctr_in, 1, 3, padding=1)
        self.scales = nn.ModuleList(Scale() for _ in range(L)) if cfg.use_scale else None
        if cfg.bbox_branch:
            self.box_tower = conv_tower(C, cfg.head_channels, cfg.num_convs)
            self.box_pred = nn.Conv2d(cfg.head_channels, 4, 3, padding=1)
            self.box_scales = nn.ModuleList(Scale() for _ in range(L)) if cfg.use_scale else None
        self.heatmap_head = (HeatmapHead(C, cfg.hm_channels, cfg.hm_num_convs, K, cfg.hm_level == "p3_upsampled")
                             if cfg.heatmap_aux else None)
        for m in (self.cls_tower, self.cls_logits, self.ctr_pred) + ((self.box_tower, self.box_pred)
                                                                    if cfg.bbox_branch else ()):
            normal_init(m)
        nn.init.constant_(self.cls_logits.bias, prior_bias())
        groups = self.kpt_head.groups if cfg.head == "kpalign" else None
        self.criterion = DirectPoseCriterion(cfg, K, self.strides, self.size_ranges, groups)

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
            return self.criterion(self._network(images, with_heatmap=True), targets, images.shape[-2:])
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

    @torch.no_grad()
    def predict(self, batch: dict, test_cfg) -> list[PoseResult]:
        """People per image in original pixels (:func:`regpose.models.directpose.decode.predict`)."""
        return decode.predict(self, batch, test_cfg)


def build_directpose(cfg, keypoints: KeypointMeta) -> DirectPose:
    """Build DirectPose from a full :class:`regpose.config.Config` for the keypoint layout ``keypoints``."""
    return DirectPose(cfg.model, keypoints)
