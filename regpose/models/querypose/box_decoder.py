"""QueryPose's box decoder (Sparse R-CNN head, paper Eq. 1, spec 3): proposal boxes, multi-level RoIAlign and
one decoder stage (self-attention over proposals, dynamic instance interaction, FFN, class logit, box deltas)."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from ..layers.dynamic_conv import DynamicConv

__all__ = ["apply_box_deltas", "box_rois", "MultiLevelRoIAlign", "BoxDecoderStage"]

_SCALE_CLAMP = math.log(100000.0 / 16)


def apply_box_deltas(deltas: torch.Tensor, boxes: torch.Tensor, weights=(2.0, 2.0, 1.0, 1.0)) -> torch.Tensor:
    """R-CNN box update (Sparse R-CNN ``apply_deltas``): (n, 4) deltas relative to (n, 4) xyxy boxes."""
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    ctr_x = boxes[:, 0] + 0.5 * widths
    ctr_y = boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx, dy = deltas[:, 0] / wx, deltas[:, 1] / wy
    dw = torch.clamp(deltas[:, 2] / ww, max=_SCALE_CLAMP)
    dh = torch.clamp(deltas[:, 3] / wh, max=_SCALE_CLAMP)
    cx = dx * widths + ctr_x
    cy = dy * heights + ctr_y
    w = torch.exp(dw) * widths
    h = torch.exp(dh) * heights
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=1)


def box_rois(boxes: torch.Tensor) -> torch.Tensor:
    """(B, N, 4) -> (B*N, 5) [batch index, x1, y1, x2, y2] for torchvision's roi_align."""
    b, n = boxes.shape[:2]
    idx = torch.arange(b, device=boxes.device, dtype=boxes.dtype).repeat_interleave(n)
    return torch.cat([idx[:, None], boxes.reshape(b * n, 4)], dim=1)


class MultiLevelRoIAlign(nn.Module):
    """detectron2 ``ROIPooler`` with ROIAlignV2 (aligned=True) over pyramid levels (first level = 2).

    Level = floor(4 + log2(sqrt(area) / 224 + 1e-8)) clamped to the available levels (FPN paper Eq. 1). Under
    tracing / ONNX export every level is pooled for every box and the assigned one selected (no
    data-dependent control flow; the box pooler is <0.1% of the model's cost).
    """

    def __init__(self, output_size: int, strides: Sequence[int], sampling_ratio: int = 2,
                 canonical_box_size: float = 224.0, canonical_level: int = 4):
        super().__init__()
        self.output_size = output_size
        self.scales = [1.0 / s for s in strides]
        self.sampling_ratio = sampling_ratio
        self.min_level = int(round(math.log2(strides[0])))
        self.max_level = int(round(math.log2(strides[-1])))
        self.canonical_box_size = canonical_box_size
        self.canonical_level = canonical_level

    def levels(self, rois: torch.Tensor) -> torch.Tensor:
        """Pyramid level index (0 = first level) of each RoI."""
        box = rois[:, 1:]
        size = torch.sqrt((box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1]))
        level = torch.floor(self.canonical_level + torch.log2(size / self.canonical_box_size + 1e-8))
        return torch.clamp(level, self.min_level, self.max_level).long() - self.min_level

    def forward(self, feats: Sequence[torch.Tensor], rois: torch.Tensor) -> torch.Tensor:
        r, sr = self.output_size, self.sampling_ratio
        if len(feats) == 1:
            return roi_align(feats[0], rois, r, self.scales[0], sr, aligned=True)
        level = self.levels(rois)                                                             # (n,)
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            # static graph: pool every level, keep the assigned one
            stacked = torch.stack([roi_align(f, rois, r, s, sr, aligned=True)
                                   for f, s in zip(feats, self.scales)])                      # (L, n, C, r, r)
            return stacked.gather(0, level.view(1, -1, 1, 1, 1).expand(1, *stacked.shape[1:]))[0]
        # eager: each level pools only its RoIs (detectron2 ROIPooler); same numbers, less work
        out = feats[0].new_zeros(rois.shape[0], feats[0].shape[1], r, r)
        for i, (f, s) in enumerate(zip(feats, self.scales)):
            idx = torch.nonzero(level == i, as_tuple=True)[0]
            if idx.numel():
                out = out.index_put((idx,), roi_align(f, rois[idx], r, s, sr, aligned=True))
        return out


def _tower(d: int, layers: int) -> nn.Sequential:
    mods: list[nn.Module] = []
    for _ in range(layers):
        mods += [nn.Linear(d, d, bias=False), nn.LayerNorm(d), nn.ReLU(inplace=True)]
    return nn.Sequential(*mods)


class BoxDecoderStage(nn.Module):
    """Self-attention over proposals -> dynamic instance interaction with the 7x7 RoI tokens -> FFN -> class
    logit and box deltas. Post-norm; names follow the official ``RCNNHead``."""

    def __init__(self, d: int, num_heads: int, dim_ff: int, dim_dynamic: int, pooler_resolution: int,
                 num_cls_layers: int, num_reg_layers: int, num_classes: int = 1):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, num_heads, dropout=0.0, batch_first=True)
        self.inst_interact = DynamicConv(d, dim_dynamic, pooler_resolution ** 2)
        self.linear1 = nn.Linear(d, dim_ff)
        self.linear2 = nn.Linear(dim_ff, d)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)
        self.norm3 = nn.LayerNorm(d)
        self.cls_module = _tower(d, num_cls_layers)
        self.reg_module = _tower(d, num_reg_layers)
        self.class_logits = nn.Linear(d, num_classes)
        self.bboxes_delta = nn.Linear(d, 4)

    def forward(self, roi_tokens: torch.Tensor, boxes: torch.Tensor, query: torch.Tensor):
        """roi_tokens (B*N, T, d), boxes (B, N, 4) xyxy px, query (B, N, d) ->
        logits (B, N, C), new boxes (B, N, 4), query (B, N, d)."""
        b, n, d = query.shape
        q = self.norm1(query + self.self_attn(query, query, query, need_weights=False)[0])
        q = q.reshape(b * n, d)
        q = self.norm2(q + self.inst_interact(q, roi_tokens))
        q = self.norm3(q + self.linear2(F.relu(self.linear1(q))))
        logits = self.class_logits(self.cls_module(q))
        deltas = self.bboxes_delta(self.reg_module(q))
        new_boxes = apply_box_deltas(deltas, boxes.reshape(b * n, 4))
        return logits.view(b, n, -1), new_boxes.view(b, n, 4), q.view(b, n, d)

