"""QueryPose (Xiao et al., NeurIPS 2022): sparse end-to-end multi-person pose regression with spatial-aware
part-level queries. Image in, people out: no NMS, no grouping.

Architecture (paper Fig. 2, official code buptxyb666/QueryPose @ 75350bf; ../shared/reference/querypose/spec.md):

  backbone + FPN (P2-P5, 256 ch)
  for each of S stages (weights not shared):
    box decoder (Sparse R-CNN head, Eq. 1): 7x7 multi-level RoIAlign of the proposal boxes, self-attention
        over proposals, dynamic channel interaction, FFN, class logit and box deltas -> refined boxes
    keypoint decoder (Eq. 2): 14x14 RoIAlign on P2 of the *refined* boxes, stacked 3x3 convs,
        [non-light: dynamic interaction refining the instance query], SPEGM (spatial part attention -> part
        embeddings, Sec. 3.2), SIM (gated update of the part queries, Eq. 3), self-attention across parts,
        one normalised linear per part for mu and one for sigma (RLE, Eq. 4)
  training: Hungarian matching per stage (focal / L1 / GIoU costs), focal + L1 + GIoU box losses and the
        RLE keypoint loss on the matched queries at every stage (deep supervision)
  inference: score = p(person) x mean_k(1 - sigma_k); keypoints mapped from the box frame to pixels.

Official behaviours we reproduce deliberately (the released checkpoints depend on them) are marked
``# Official code:``; spec section numbers are given as (spec 0.2) etc.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import generalized_box_iou_loss, roi_align, sigmoid_focal_loss

from ..structures import PoseResult
from .backbones import BackboneConfig, build_backbone
from .base import PoseModel
from .layers.distributed import global_normalizer
from .layers.dynamic_conv import DynamicConv, eager_cpu_inference
from .layers.linear import NormalizedLinear
from .layers.matcher import HungarianMatcher
from .layers.rle import RealNVP, rle_loss
from .necks import FPN, HRFPN, HRFPNv1
from .registry import MethodSpec, register_method

__all__ = ["QueryPoseConfig", "QueryPose", "build_querypose", "querypose_transform", "part_groups",
           "BoxDecoderStage", "KeypointDecoderStage", "SPEGM", "SelectiveIteration", "winograd_conv3x3",
           "winograd_conv_relu_tower", "winograd_weight"]


# ==========================================================================================================
# Configuration
# ==========================================================================================================
@dataclass
class QueryPoseConfig:
    """QueryPose's knobs. Defaults = the official R50 config (``querypose.res50.100pro.3x.yaml``) and the
    paper's best ablation settings (part queries, SPEGM, SIM, 7-part scheme (c), dp = 128, Fig. 3(b))."""
    # ---- backbone and neck (spec 1)
    # resnet50 / hrnet_w32 / hrnet_w48 / swin_*; ResNet: detectron2 FrozenBN and FREEZE_AT 2 (stem + res2) as
    # official, HRNet / Swin configs: trainable BatchNorm, nothing frozen
    backbone: BackboneConfig = field(default_factory=lambda: BackboneConfig("resnet50", norm="frozen_bn",
                                                                            freeze_at=2))
    neck: Literal["fpn", "hrfpn", "hrfpn_v1"] = "fpn"
    hidden_dim: int = 256                   # d: FPN channels and instance-query width
    # ---- box decoder (Sparse R-CNN, spec 3)
    num_proposals: int = 100                # N
    num_stages: int = 6                     # S
    num_heads: int = 8                      # attention heads (instance and part self-attention)
    dim_feedforward: int = 2048
    dim_dynamic: int = 64
    num_cls_layers: int = 1
    num_reg_layers: int = 3
    box_pooler_resolution: int = 7
    sampling_ratio: int = 2
    # ---- keypoint decoder (spec 4)
    kpt_pooler_resolution: int = 14
    num_convs: int = 6
    part_dim: int = 128                     # dp (Table 2c)
    part_scheme: Literal["a", "b", "c", "d"] = "c"   # Fig. 4 / Table 2d; (c) is the official 7-part division
    light: bool = False                     # official LIGHT_VERSION: no instance-query dynamic MLP + FFN
    # ---- ablation switches (Tables 1-3)
    query_type: Literal["part", "instance"] = "part"          # Table 1: part-level (PQ) or instance-level (IQ)
    interaction: Literal["spegm", "mhsa", "dymlp_channel", "dymlp_spatial", "gap"] = "spegm"
    #   Table 1 / 2b: how RoI features become part embeddings. spegm = spatial attention (IQ: "Spatial Attn."),
    #   gap = Table 2b baseline (global average pooling, no spatial attention).
    iteration: Literal["selective", "summation", "concatenation", "none"] = "selective"   # Table 2a (SIM)
    query_handoff: Literal["official", "serial", "parallel"] = "official"
    #   non-light only (Fig. 3 / spec 0.2): serial = the keypoint decoder's refined instance query feeds the
    #   next box stage (Fig. 3b); parallel = it never does (Fig. 3a); official = serial for the matched queries
    #   in training, parallel at inference (what the released code does).
    keep_unused_official: bool = True       # keep parameters the official model holds but never uses
    #   (SIM fc3 / norm_fc3, HRFPN fpn_conv.4, HRFPN_v1 lateral_conv.0 / fpn_conv.4) so parameter counts
    #   and state dicts equal the released ones; they never change an output.
    # ---- losses (spec 5, 6)
    class_weight: float = 2.0
    l1_weight: float = 5.0
    giou_weight: float = 2.0
    kpt_weight: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    prior_prob: float = 0.01
    deep_supervision: bool = True
    flow_hidden: int = 64
    flow_layers: int = 6
    # ---- input (spec 1): RGB in 0..255 normalised by mean / std; augmentation is cfg.data.augment.onestage
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    # ---- inference speed (ours; outputs unchanged unless said otherwise)
    conv_impl: Literal["direct", "winograd"] = "winograd"
    #   keypoint-decoder 3x3 convs at inference: winograd = exact F(4x4, 3x3) Winograd transform (~3x fewer
    #   multiplies, same result up to fp32 rounding); direct = plain conv2d. Training always uses conv2d.
    parallel_chunks: bool = True
    #   eager CPU inference decodes keypoints proposal-chunk-wise in torch.get_num_threads() worker threads
    #   (single-threaded ops each) instead of intra-op OpenMP threads (same numbers)
    channels_last: bool = True
    #   eager CPU inference runs the backbone / neck in channels-last memory (same numbers, faster convolutions)
    fast_topk: int = 0
    #   > 0: decode keypoints only for the proposals that can reach the top ``fast_topk`` pose scores (the
    #   box decoder runs for all N first; pose score <= class probability bounds the rest). The returned
    #   top-``fast_topk`` people are identical to the full model's; lower-ranked proposals are dropped.
    flip_fusion_iou: float = 0.5            # flip test (ours): pair original / flipped people above this IoU

    def __post_init__(self):
        if self.num_convs < 1 or self.num_stages < 1 or self.num_proposals < 1:
            raise ValueError("num_convs, num_stages and num_proposals must be >= 1")
        if self.part_dim % 4 != 0:
            raise ValueError(f"part_dim must be a multiple of 4 (SIM bottleneck dp/4), got {self.part_dim}")


# ==========================================================================================================
# Part divisions (paper Fig. 4)
# ==========================================================================================================
_FORMAT_BY_KEYPOINTS = {17: "coco", 14: "crowdpose", 16: "mpii"}


def _keypoint_meta(num_keypoints: int):
    from ..data.keypoints import get_meta

    if num_keypoints not in _FORMAT_BY_KEYPOINTS:
        raise ValueError(f"QueryPose: no keypoint layout with {num_keypoints} keypoints "
                         f"(known: {sorted(_FORMAT_BY_KEYPOINTS)})")
    return get_meta(_FORMAT_BY_KEYPOINTS[num_keypoints])


def part_groups(num_keypoints: int, scheme: str = "c", query_type: str = "part") -> list[list[int]]:
    """Keypoint indices of each part query (:mod:`regpose.data.keypoints`; scheme (c) is the official 7-part
    division, keypoints inside a part in the official regressors' output order, spec 4.8).
    ``query_type='instance'`` (Table 1 "IQ") uses one query for all keypoints."""
    if query_type == "instance":
        return [list(range(num_keypoints))]
    return _keypoint_meta(num_keypoints).parts(scheme)


# ==========================================================================================================
# Box geometry and RoI pooling
# ==========================================================================================================
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


def _batched(weight: torch.Tensor, b: int | None = None) -> torch.Tensor:
    """An embedding table as a (1 or b, ...) batch. Without autograd it is detached: a view of a parameter
    taken under no_grad would still claim requires_grad, which confuses module hooks (e.g. FLOP counters)."""
    w = weight if torch.is_grad_enabled() else weight.detach()
    return w[None] if b is None else w[None].expand(b, *w.shape)


def _rois(boxes: torch.Tensor) -> torch.Tensor:
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


# ==========================================================================================================
# Box decoder stage (Sparse R-CNN head, paper Eq. 1, spec 3)
# ==========================================================================================================
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


# ==========================================================================================================
# Winograd F(4x4, 3x3): the keypoint decoder's 3x3 convs with ~3x fewer multiplies (exact up to rounding)
# ==========================================================================================================
# Lavin & Gray 2016, interpolation points 0, +-1, +-2, inf:  Y = A^T [ (G g G^T) . (B^T d B) ] A  per 6x6 input
# tile d (stride 4) and 3x3 kernel g, giving a 4x4 output tile. 91% of QueryPose's FLOPs are 3x3 convs on
# 14x14 RoIs; Winograd replaces 9 multiplies per output by 36/16 = 2.25 (2.94 with the 16x16 tiling of 14x14).
_WINO_BT = torch.tensor([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                         [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], dtype=torch.float64)
_WINO_G = torch.tensor([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                        [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], dtype=torch.float64)
_WINO_AT = torch.tensor([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                         [0, 1, -1, 8, -8, 1]], dtype=torch.float64)


def winograd_weight(weight: torch.Tensor) -> torch.Tensor:
    """(O, I, 3, 3) conv weight -> (36, O, I): the transformed taps G g G^T (computed in float64)."""
    g = _WINO_G.to(weight.device)
    u = torch.einsum("pa,ocab,qb->pqoc", g, weight.double(), g)            # (6, 6, O, I)
    return u.reshape(36, *weight.shape[:2]).to(weight.dtype)


def winograd_conv3x3(x: torch.Tensor, weight36: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Reference: one 3x3 convolution (stride 1, padding 1) via Winograd F(4x4, 3x3), NCHW in and out, written
    as plainly as possible (einsum transforms, one batched matmul); ``weight36`` from :func:`winograd_weight`."""
    n, c, h, w = x.shape
    th, tw = (h + 3) // 4, (w + 3) // 4
    bt, at = _WINO_BT.to(x), _WINO_AT.to(x)
    xp = F.pad(x, (1, 4 * tw + 1 - w, 1, 4 * th + 1 - h))                # (n, C, 4th+2, 4tw+2)
    tiles = xp.unfold(2, 6, 4).unfold(3, 6, 4)                            # (n, C, th, tw, 6, 6)
    v = torch.einsum("pa,nctwab,qb->pqntwc", bt, tiles, bt).reshape(36, -1, c)
    m = torch.bmm(v, weight36.transpose(1, 2)).view(6, 6, n, th, tw, -1)  # (6, 6, n, th, tw, O)
    y = torch.einsum("ip,pqntwo,jq->notiwj", at, m, at)                   # (n, O, th, 4, tw, 4)
    y = y.reshape(n, -1, 4 * th, 4 * tw)[:, :, :h, :w]
    return y if bias is None else y + bias.view(1, -1, 1, 1)


def _onednn_linear_available() -> bool:
    try:
        return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        return False


class WinogradConv3x3:
    """Inference-time state of one 3x3 conv for :func:`winograd_conv_relu_tower`: the 36 transformed tap
    matrices (out x in) and the bias. On CPU the 36 channel GEMMs go through oneDNN with weights pre-packed
    once (MKL's sgemm reaches about half the speed on some CPUs); elsewhere a batched matmul."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        w36 = winograd_weight(weight.detach())
        self.out_channels = weight.shape[0]
        self.bias = None if bias is None else bias.detach()
        self.packed = None
        if w36.device.type == "cpu" and w36.dtype == torch.float32 and _onednn_linear_available():
            try:
                self.packed = [torch.ops.mkldnn._reorder_linear_weight(w36[k].contiguous(), 1024)
                               for k in range(36)]
            except RuntimeError:  # pragma: no cover - oneDNN op missing at run time
                self.packed = None
        self.weight36 = None if self.packed is not None else w36.transpose(1, 2).contiguous()   # (36, I, O)

    def gemm(self, v: torch.Tensor) -> torch.Tensor:
        """(36, T, I) transformed inputs -> (36, T, O) transformed outputs."""
        if self.packed is not None:
            lin = torch.ops.mkldnn._linear_pointwise
            return torch.stack([lin(v[k], self.packed[k], None, "none", [], "") for k in range(36)])
        return torch.bmm(v, self.weight36)


def winograd_conv_relu_tower(x: torch.Tensor, layers: Sequence[WinogradConv3x3], chunk: int = 16) -> torch.Tensor:
    """A stack of (3x3 conv, padding 1) + ReLU via Winograd F(4x4, 3x3) (eager inference; no autograd).

    RoIs go through the whole stack ``chunk`` at a time so each layer's working set (~36 x 256 tiles x 512
    channels) stays in the last-level cache; the transforms are memory-bound and this halves their cost.
    The activations stay in one zero-bordered NHWC buffer between layers. Per layer: gather the overlapping 6x6
    tiles tap-major (36, tiles*C), input transform B^T d B (two small matmuls), the 36 per-tap channel GEMMs,
    output transform A^T M A (two small matmuls), scatter the 4x4 tiles into the next buffer, add the bias,
    ReLU, re-zero the border. x: (n, C, H, W) -> (n, O, H, W) in channels-last memory.
    """
    if x.shape[0] > chunk:
        out = torch.cat([_winograd_tower(x[i:i + chunk], layers).permute(0, 2, 3, 1)
                         for i in range(0, x.shape[0], chunk)])                # (n, H, W, O)
        return out.permute(0, 3, 1, 2)
    return _winograd_tower(x, layers)


def _winograd_tower(x: torch.Tensor, layers: Sequence[WinogradConv3x3]) -> torch.Tensor:
    n, c, h, w = x.shape
    th, tw = (h + 3) // 4, (w + 3) // 4
    hp, wp = 4 * th + 2, 4 * tw + 2
    t = n * th * tw
    bt, at = _WINO_BT.to(x), _WINO_AT.to(x)
    buf = x.new_zeros(n, hp, wp, c)
    buf[:, 1:h + 1, 1:w + 1] = x.permute(0, 2, 3, 1)
    for layer in layers:
        o = layer.out_channels
        tiles = buf.unfold(1, 6, 4).unfold(2, 6, 4).permute(4, 5, 0, 1, 2, 3).reshape(6, 6 * t * c)
        # B^T d B separably (rows, then columns): two small-K matmuls instead of one (36 x 36) one
        v = torch.matmul(bt, torch.mm(bt, tiles).view(6, 6, t * c)).view(36, t, c)   # tap-major
        m = layer.gemm(v)                                                   # (36, T, O)
        y = torch.matmul(at, torch.mm(at, m.view(6, 6 * t * o)).view(4, 6, t * o))  # A^T M A: (4, 4, T*O)
        y = y.view(4, 4, n, th, tw, o)
        nxt = x.new_empty(n, hp, wp, o)
        nxt[:, 1:4 * th + 1, 1:4 * tw + 1].view(n, th, 4, tw, 4, o).copy_(y.permute(2, 3, 0, 4, 1, 5))
        inner = nxt[:, 1:h + 1, 1:w + 1]
        if layer.bias is not None:
            inner.add_(layer.bias)
        inner.relu_()
        nxt[:, 0].zero_()
        nxt[:, h + 1:].zero_()
        nxt[:, :, 0].zero_()
        nxt[:, :, w + 1:].zero_()
        buf, c = nxt, o
    return buf[:, 1:h + 1, 1:w + 1].permute(0, 3, 1, 2)


_POOL: tuple[int, "object"] | None = None


def _worker_pool(threads: int):
    """A process-wide pool of ``threads`` workers, each running torch ops single-threaded."""
    global _POOL
    if _POOL is None or _POOL[0] != threads:
        from concurrent.futures import ThreadPoolExecutor

        if _POOL is not None:
            _POOL[1].shutdown(wait=False)
        _POOL = (threads, ThreadPoolExecutor(threads, thread_name_prefix="querypose",
                                             initializer=torch.set_num_threads, initargs=(1,)))
    return _POOL[1]


# ==========================================================================================================
# Keypoint decoder stage (paper Eq. 2, Sec. 3.2-3.3, spec 4)
# ==========================================================================================================
class SPEGM(nn.Module):
    """Spatial Part Embedding Generation Module (Sec. 3.2): deconv x2 -> per-part spatial softmax attention
    -> attention-weighted sum of the upsampled RoI features -> Linear(d -> dp). E = Linear(A (x) ROI^T)."""

    def __init__(self, d: int, dp: int, num_parts: int):
        super().__init__()
        self.upsample = nn.Sequential(nn.ConvTranspose2d(d, d, 4, stride=2, padding=1, bias=False),
                                      nn.BatchNorm2d(d), nn.ReLU(inplace=True))
        self.attention_conv = nn.Conv2d(d, num_parts, 3, padding=1)       # official LSA_conv
        self.fc = nn.Linear(d, dp)

    def _upsample(self, u: torch.Tensor) -> torch.Tensor:
        """Deconv -> BN -> ReLU. At eager inference the (eval-mode) BN is folded into the deconvolution: one
        pass less over the (n, d, 28, 28) map, the same numbers up to rounding."""
        deconv, bn = self.upsample[0], self.upsample[1]
        if self.training or bn.training or not eager_cpu_inference(u):
            return self.upsample(u)
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        weight = deconv.weight * scale.view(1, -1, 1, 1)                   # (in, out, k, k): scale outputs
        bias = bn.bias - bn.running_mean * scale
        return F.relu_(F.conv_transpose2d(u, weight, bias, stride=2, padding=1))

    def forward(self, u: torch.Tensor, part_query: torch.Tensor | None = None) -> torch.Tensor:
        """u (n, d, r, r) -> part embeddings (n, P, dp)."""
        x = self._upsample(u)                                              # (n, d, 2r, 2r)
        attn = self.attention_conv(x).flatten(2).softmax(-1)              # (n, P, 4r^2)
        e = torch.bmm(attn, x.flatten(2).transpose(1, 2))                  # (n, P, d)
        return self.fc(e)


class GlobalPoolEmbedding(nn.Module):
    """Table 2b baseline ("SPEGM off"): global average pooling of the RoI features, one Linear per part."""

    def __init__(self, d: int, dp: int, num_parts: int):
        super().__init__()
        self.num_parts, self.dp = num_parts, dp
        self.fc = nn.Linear(d, num_parts * dp)

    def forward(self, u: torch.Tensor, part_query: torch.Tensor | None = None) -> torch.Tensor:
        return self.fc(u.mean((2, 3))).view(u.shape[0], self.num_parts, self.dp)


class CrossAttentionEmbedding(nn.Module):
    """Table 1 "MHSA" interaction: the part queries attend to the RoI feature tokens."""

    def __init__(self, d: int, dp: int, num_heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(dp, num_heads, kdim=d, vdim=d, batch_first=True)
        self.norm = nn.LayerNorm(dp)

    def forward(self, u: torch.Tensor, part_query: torch.Tensor) -> torch.Tensor:
        tokens = u.flatten(2).transpose(1, 2)                              # (n, T, d)
        q = part_query.expand(u.shape[0], -1, -1)
        return self.norm(q + self.attn(q, tokens, tokens, need_weights=False)[0])


class PartDynamicMLP(nn.Module):
    """Table 1 "DyMLP" interactions: each part query generates an MLP applied to the RoI tokens.

    channel: W1 (d x dd), W2 (dd x dp) mix channels (Sparse R-CNN's dynamic conv per part);
    spatial: W1 (T x dd) mixes the T token positions. Both end in a shared Linear to dp. The paper gives
    no further detail; this is our reading of it.
    """

    def __init__(self, d: int, dp: int, dim_dynamic: int, num_tokens: int, mode: Literal["channel", "spatial"]):
        super().__init__()
        self.mode, self.d, self.dp, self.dd, self.t = mode, d, dp, dim_dynamic, num_tokens
        n_params = d * dim_dynamic + dim_dynamic * dp if mode == "channel" else num_tokens * dim_dynamic
        self.dynamic_layer = nn.Linear(dp, n_params)
        self.norm1 = nn.LayerNorm(dim_dynamic)
        self.norm2 = nn.LayerNorm(dp) if mode == "channel" else None
        out_in = num_tokens * dp if mode == "channel" else d * dim_dynamic
        self.out_layer = nn.Linear(out_in, dp)
        self.norm3 = nn.LayerNorm(dp)

    def forward(self, u: torch.Tensor, part_query: torch.Tensor) -> torch.Tensor:
        n = u.shape[0]
        q = part_query.expand(n, -1, -1)                                   # (n, P, dp)
        p = q.shape[1]
        tokens = u.flatten(2).transpose(1, 2)                              # (n, T, d)
        params = self.dynamic_layer(q)                                     # (n, P, n_params)
        if self.mode == "channel":
            w1 = params[..., : self.d * self.dd].reshape(n, p, self.d, self.dd)
            w2 = params[..., self.d * self.dd:].reshape(n, p, self.dd, self.dp)
            x = F.relu(self.norm1(torch.einsum("ntc,npcr->nptr", tokens, w1)))
            x = F.relu(self.norm2(torch.einsum("nptr,nprk->nptk", x, w2)))    # (n, P, T, dp)
        else:
            w1 = params.reshape(n, p, self.t, self.dd)
            x = F.relu(self.norm1(torch.einsum("ntc,nptr->npcr", tokens, w1)))  # (n, P, d, dd)
        return F.relu(self.norm3(self.out_layer(x.flatten(2))))


class SelectiveIteration(nn.Module):
    """SIM (Sec. 3.3, Eq. 3): gates g_E, g_Q = sigmoid(MLP(E + Q)); Q' = g_E * E + g_Q * Q.

    Official code: the MLP is fc1 (no bias) -> LayerNorm -> ReLU -> fc2 (2 dp outputs: the first dp gate E,
    the last dp gate Q). ``fc3`` / ``norm_fc3`` exist in the official module but are never used.
    """

    def __init__(self, dp: int, keep_unused: bool = False):
        super().__init__()
        self.dp = dp
        self.fc1 = nn.Linear(dp, dp // 4, bias=False)
        self.norm_fc1 = nn.LayerNorm(dp // 4)
        self.fc2 = nn.Linear(dp // 4, 2 * dp)
        if keep_unused:
            self.fc3 = nn.Linear(dp, dp, bias=False)
            self.norm_fc3 = nn.LayerNorm(dp)

    def forward(self, e: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.fc2(F.relu(self.norm_fc1(self.fc1(e + q)))))
        return g[..., : self.dp] * e + g[..., self.dp:] * q


class SumIteration(nn.Module):
    """Table 2a "Summation": Q' = E + Q."""

    def forward(self, e: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return e + q


class ConcatIteration(nn.Module):
    """Table 2a "Concatenation": Q' = Linear([E, Q])."""

    def __init__(self, dp: int):
        super().__init__()
        self.fc = nn.Linear(2 * dp, dp)

    def forward(self, e: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cat([e, q.expand_as(e)], dim=-1))


class NoIteration(nn.Module):
    """Table 2a "None": the part queries are the new embeddings, no memory of previous stages."""

    def forward(self, e: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return e


class KeypointDecoderStage(nn.Module):
    """One keypoint decoder stage (official ``Pose_Decoder_Layer``).

    RoI features U = convs(RoIAlign14(P2, box)); [non-light: q~ = FFN(LN(q + DyConv(q, U)))]; E = SPEGM(U) +
    Linear_j(q~) per part; Q = SIM(E, Q_prev); Q = FFN(LN(Q + MHSA_parts(Q))); mu_j = NormLinear_j(Q_j),
    sigma_j = sigmoid(Linear_j(Q_j)). mu is in the box frame (0 = centre, +-0.5 = edges).
    """

    def __init__(self, cfg: QueryPoseConfig, parts: list[list[int]]):
        super().__init__()
        d, dp, ff = cfg.hidden_dim, cfg.part_dim, cfg.dim_feedforward
        self.parts = parts
        self.num_parts = len(parts)
        self.dp = dp
        self.light = cfg.light
        self.conv_impl = cfg.conv_impl
        chans = [d] + [2 * d] * (cfg.num_convs - 1) + [d]
        self.convs = nn.ModuleList(nn.Conv2d(chans[i], chans[i + 1], 3, padding=1) for i in range(cfg.num_convs))
        if not cfg.light:
            self.inst_interact = DynamicConv(d, cfg.dim_dynamic, cfg.kpt_pooler_resolution ** 2)
            self.inst_norm = nn.LayerNorm(d)
            self.inst_linear1 = nn.Linear(d, ff)
            self.inst_linear2 = nn.Linear(ff, d)
            self.inst_norm2 = nn.LayerNorm(d)
        if cfg.interaction == "spegm":
            self.part_embed = SPEGM(d, dp, self.num_parts)
        elif cfg.interaction == "gap":
            self.part_embed = GlobalPoolEmbedding(d, dp, self.num_parts)
        elif cfg.interaction == "mhsa":
            self.part_embed = CrossAttentionEmbedding(d, dp, cfg.num_heads)
        else:
            self.part_embed = PartDynamicMLP(d, dp, cfg.dim_dynamic, cfg.kpt_pooler_resolution ** 2,
                                             "channel" if cfg.interaction == "dymlp_channel" else "spatial")
        # Official code: one Linear(d -> dp) per part (``residual_filter``); one stacked Linear here.
        self.instance_to_parts = nn.Linear(d, self.num_parts * dp)
        self.iteration = {"selective": lambda: SelectiveIteration(dp, cfg.keep_unused_official),
                          "summation": SumIteration, "concatenation": lambda: ConcatIteration(dp),
                          "none": NoIteration}[cfg.iteration]()
        self.part_attn = nn.MultiheadAttention(dp, cfg.num_heads, dropout=0.0, batch_first=True)
        self.part_attn_norm = nn.LayerNorm(dp)
        self.part_linear1 = nn.Linear(dp, ff)
        self.part_linear2 = nn.Linear(ff, dp)
        self.part_ffn_norm = nn.LayerNorm(dp)
        self.coord_heads = nn.ModuleList(NormalizedLinear(dp, 2 * len(p)) for p in parts)
        self.sigma_heads = nn.ModuleList(nn.Linear(dp, 2 * len(p)) for p in parts)
        order = [k for p in parts for k in p]
        self.register_buffer("part_to_kpt", torch.tensor(np.argsort(order), dtype=torch.long), persistent=False)
        self._wino_cache: tuple | None = None

    def __getstate__(self):
        # the Winograd cache holds oneDNN (opaque) tensors: never copy / pickle it, it is rebuilt on demand
        state = dict(self.__dict__)
        state["_wino_cache"] = None
        return state

    def train(self, mode: bool = True):
        if mode:
            self._wino_cache = None     # transformed weights go stale while training; free their memory
        return super().train(mode)

    # ---- RoI feature tower -------------------------------------------------------------------------------
    def _winograd_layers(self) -> list[WinogradConv3x3]:
        """Transformed (and pre-packed) weights of every conv, rebuilt when a parameter changes (in-place
        updates bump ``_version``; replacing or moving it changes the storage)."""
        key = tuple((c.weight._version, c.weight.data_ptr(), c.weight.device, c.weight.dtype,
                     None if c.bias is None else (c.bias._version, c.bias.data_ptr())) for c in self.convs)
        if self._wino_cache is None or self._wino_cache[0] != key:
            self._wino_cache = (key, [WinogradConv3x3(c.weight, c.bias) for c in self.convs])
        return self._wino_cache[1]

    def roi_convs(self, x: torch.Tensor) -> torch.Tensor:
        """Stacked 3x3 conv + ReLU on (n, d, r, r) RoI features -> U (n, d, r, r). Eager CPU inference with
        ``conv_impl='winograd'`` takes the Winograd tower (same result up to fp32 rounding); training, CUDA,
        tracing and ONNX export use plain convolutions."""
        if self.conv_impl == "winograd" and eager_cpu_inference(x) and x.shape[0] > 0:
            return winograd_conv_relu_tower(x, self._winograd_layers())
        for conv in self.convs:
            x = F.relu(conv(x))
        return x

    # ---- forward -----------------------------------------------------------------------------------------
    def forward(self, roi_feats: torch.Tensor, query: torch.Tensor, part_query: torch.Tensor):
        """roi_feats (n, d, r, r) 14x14 RoIAlign of P2; query (n, d); part_query (n or 1, P, dp) ->
        mu (n, K, 2) box frame, sigma (n, K, 2), new part queries (n, P, dp), instance query q~ (n, d)."""
        n = roi_feats.shape[0]
        u = self.roi_convs(roi_feats)                                      # (n, d, r, r)
        q = query
        if not self.light:
            tokens = u.flatten(2).transpose(1, 2)                          # (n, r*r, d)
            q = self.inst_norm(q + self.inst_interact(q, tokens))
            q = self.inst_norm2(q + self.inst_linear2(F.relu(self.inst_linear1(q))))
        e = self.part_embed(u, part_query)                                 # (n, P, dp)
        e = e + self.instance_to_parts(q).view(n, self.num_parts, self.dp)
        pq = self.iteration(e, part_query)                                 # (n, P, dp)
        pq = self.part_attn_norm(pq + self.part_attn(pq, pq, pq, need_weights=False)[0])
        pq = self.part_ffn_norm(pq + self.part_linear2(F.relu(self.part_linear1(pq))))
        mu = torch.cat([head(pq[:, j]) for j, head in enumerate(self.coord_heads)], dim=1)
        sig = torch.cat([head(pq[:, j]) for j, head in enumerate(self.sigma_heads)], dim=1)
        mu = mu.view(n, -1, 2)[:, self.part_to_kpt]                        # (n, K, 2) in dataset order
        sigma = torch.sigmoid(sig.view(n, -1, 2)[:, self.part_to_kpt])
        return mu, sigma, pq, q


# ==========================================================================================================
# The model
# ==========================================================================================================
class QueryPose(PoseModel):
    """Backbone + neck, S box decoder stages and S keypoint decoder stages, Hungarian set loss with RLE.

    ``forward(images, targets)`` -> weighted losses (training, every stage); ``forward(images,
    image_sizes=...)`` in eval -> dict of (B, N, ...) tensors: ``scores`` (pose score), ``logits``, ``boxes``
    (xyxy, network-input pixels), ``keypoints`` (x, y, per-keypoint score; input pixels), ``sigma``.
    """

    size_divisibility = 32

    def __init__(self, cfg: QueryPoseConfig, num_keypoints: int = 17):
        super().__init__()
        self.cfg = cfg
        self.num_keypoints = num_keypoints
        self.parts = part_groups(num_keypoints, cfg.part_scheme, cfg.query_type)
        d = cfg.hidden_dim
        swin = cfg.backbone.name.startswith("swin")           # timm Swin has no stride-2 stem level
        self.backbone = build_backbone(cfg.backbone, (0, 1, 2, 3) if swin else (1, 2, 3, 4))
        in_channels = self.backbone.channels
        keep = cfg.keep_unused_official
        if cfg.neck == "fpn":
            # Official code: LastLevelMaxPool builds a P6 nobody reads; it has no parameters, we skip it.
            self.neck = FPN(in_channels, d)
        elif cfg.neck == "hrfpn":
            self.neck = HRFPN(in_channels, d, keep_unused=keep)
        else:
            self.neck = HRFPNv1(in_channels, d, keep_unused=keep)
        strides = [4, 8, 16, 32]
        self.box_pooler = MultiLevelRoIAlign(cfg.box_pooler_resolution, strides, cfg.sampling_ratio)
        self.kpt_pooler = MultiLevelRoIAlign(cfg.kpt_pooler_resolution, strides[:1], cfg.sampling_ratio)

        self.init_proposal_features = nn.Embedding(cfg.num_proposals, d)
        self.init_proposal_boxes = nn.Embedding(cfg.num_proposals, 4)
        self.part_query = nn.Embedding(len(self.parts), cfg.part_dim)
        self.box_stages = nn.ModuleList(
            BoxDecoderStage(d, cfg.num_heads, cfg.dim_feedforward, cfg.dim_dynamic, cfg.box_pooler_resolution,
                            cfg.num_cls_layers, cfg.num_reg_layers) for _ in range(cfg.num_stages))
        self.kpt_stages = nn.ModuleList(KeypointDecoderStage(cfg, self.parts) for _ in range(cfg.num_stages))
        self.matcher = HungarianMatcher(cfg.class_weight, cfg.l1_weight, cfg.giou_weight, True,
                                        cfg.focal_alpha, cfg.focal_gamma)
        self.flow = RealNVP(cfg.flow_hidden, cfg.flow_layers)   # official criterion.flow.flow (loss only)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        """Official init (spec 0.5): Xavier-uniform on every >=2-D decoder parameter, overriding the module
        inits (MSRA convs, N(0, 0.001) deconv, ...); class bias = -log((1 - pi) / pi); proposals = whole image."""
        for stage in list(self.box_stages) + list(self.kpt_stages):
            for name, p in stage.named_parameters():
                if p.dim() > 1:
                    if name.endswith("instance_to_parts.weight"):
                        # one Xavier per part block, as the official per-part Linears
                        for blk in p.data.view(-1, self.cfg.part_dim, p.shape[1]):
                            nn.init.xavier_uniform_(blk)
                    else:
                        nn.init.xavier_uniform_(p)
            for m in stage.modules():
                if isinstance(m, nn.Conv2d) and m.bias is not None:
                    nn.init.zeros_(m.bias)      # official: MSRA fill / constant init set conv biases to 0
            if isinstance(stage, KeypointDecoderStage) and isinstance(stage.part_embed, SPEGM):
                nn.init.zeros_(stage.part_embed.fc.bias)   # official: c2-Xavier sets it to 0
        bias = -math.log((1 - self.cfg.prior_prob) / self.cfg.prior_prob)
        for stage in self.box_stages:
            nn.init.constant_(stage.class_logits.bias, bias)
        nn.init.constant_(self.init_proposal_boxes.weight[:, :2], 0.5)
        nn.init.constant_(self.init_proposal_boxes.weight[:, 2:], 1.0)

    # ---- shared pieces -----------------------------------------------------------------------------------
    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """P2-P5. Eager CPU inference with ``channels_last`` runs the backbone and neck in channels-last memory
        (oneDNN's faster layout; same numbers) and hands RoIAlign contiguous NCHW maps."""
        fast = self.cfg.channels_last and eager_cpu_inference(images)
        if fast:
            images = images.contiguous(memory_format=torch.channels_last)
        feats = self.neck(self.backbone(images))[:4]
        return [f.contiguous() for f in feats] if fast else feats

    def initial_boxes(self, image_sizes: torch.Tensor) -> torch.Tensor:
        """Learned (cx, cy, w, h) proposals in [0, 1] scaled to each image's unpadded (w, h) -> (B, N, 4)."""
        cxcywh = self.init_proposal_boxes.weight
        xyxy = torch.cat([cxcywh[:, :2] - 0.5 * cxcywh[:, 2:], cxcywh[:, :2] + 0.5 * cxcywh[:, 2:]], dim=1)
        wh = image_sizes.flip(-1).to(xyxy.dtype)                          # (B, 2) = (w, h)
        return xyxy[None] * torch.cat([wh, wh], dim=1)[:, None, :]

    def box_stage(self, s: int, feats: list[torch.Tensor], boxes: torch.Tensor, query: torch.Tensor):
        roi = self.box_pooler(feats, _rois(boxes))                         # (B*N, d, 7, 7)
        tokens = roi.flatten(2).transpose(1, 2)                            # (B*N, 49, d)
        return self.box_stages[s](tokens, boxes, query)

    def kpt_stage(self, s: int, p2: torch.Tensor, rois: torch.Tensor, query: torch.Tensor,
                  part_query: torch.Tensor):
        roi = self.kpt_pooler([p2], rois)                                  # (n, d, 14, 14)
        return self.kpt_stages[s](roi, query, part_query)

    # ---- inference ---------------------------------------------------------------------------------------
    def decode(self, images: torch.Tensor, image_sizes: torch.Tensor, keep_stages: bool = False) -> dict:
        """Eval-mode decoder over all B*N proposals. Returns final (B, N, ...) tensors and, with
        ``keep_stages``, per-stage lists (logits, boxes, mu, sigma, queries, part queries).

        Official code (spec 0.2): at inference the keypoint decoder's refined instance query stays inside it,
        so the box decoder never reads the keypoint decoder and each proposal's keypoint chain (stage 1..S)
        depends only on its own boxes and queries. We therefore run the S box stages first and then the S
        keypoint stages proposal-chunk by proposal-chunk (in parallel threads on CPU): the same computation
        as the official stage-interleaved order, with coarse-grained parallelism. ``query_handoff='serial'``
        (non-light) needs the interleaved order and takes it.
        """
        feats = self.features(images)
        b, n = images.shape[0], self.cfg.num_proposals
        boxes = self.initial_boxes(image_sizes)
        query = _batched(self.init_proposal_features.weight, b)
        if self.cfg.query_handoff == "serial" and not self.cfg.light:
            return self._decode_serial(feats, boxes, query, keep_stages)
        stage_logits, stage_boxes, stage_queries = [], [], []
        for s in range(self.cfg.num_stages):
            logits, boxes, query = self.box_stage(s, feats, boxes, query)
            stage_logits.append(logits)
            stage_boxes.append(boxes)
            stage_queries.append(query)
        flat = torch.arange(b * n, device=images.device)
        kp = self._keypoint_chains(feats[0], stage_boxes, stage_queries, flat, keep_stages)
        out = self._final_outputs(logits, boxes, kp["mu"].view(b, n, -1, 2), kp["sigma"].view(b, n, -1, 2))
        if keep_stages:
            out["stages"] = {"logits": stage_logits, "boxes": stage_boxes, "query": stage_queries,
                             "mu": [m.view(b, n, -1, 2) for m in kp["stage_mu"]],
                             "sigma": [m.view(b, n, -1, 2) for m in kp["stage_sigma"]],
                             "part_query": [q.view(b, n, *q.shape[1:]) for q in kp["stage_part_query"]]}
        return out

    def _decode_serial(self, feats, boxes, query, keep_stages: bool) -> dict:
        """Stage-interleaved decoding where the keypoint decoder's refined query feeds the next box stage."""
        b, n = boxes.shape[:2]
        part_q = _batched(self.part_query.weight)
        stages: dict[str, list] = {k: [] for k in ("logits", "boxes", "mu", "sigma", "query", "part_query")}
        logits = mu = sigma = None
        for s in range(self.cfg.num_stages):
            logits, boxes, query = self.box_stage(s, feats, boxes, query)
            mu, sigma, part_q, q_ref = self.kpt_stage(s, feats[0], _rois(boxes), query.reshape(b * n, -1), part_q)
            if keep_stages:
                for k, v in (("logits", logits), ("boxes", boxes), ("mu", mu.view(b, n, -1, 2)),
                             ("sigma", sigma.view(b, n, -1, 2)), ("query", query),
                             ("part_query", part_q.view(b, n, *part_q.shape[1:]))):
                    stages[k].append(v)
            query = q_ref.view(b, n, -1)
        out = self._final_outputs(logits, boxes, mu.view(b, n, -1, 2), sigma.view(b, n, -1, 2))
        if keep_stages:
            out["stages"] = stages
        return out

    def _keypoint_chain(self, p2, stage_boxes, stage_queries, flat: torch.Tensor, keep_stages: bool) -> dict:
        """Keypoint stages 1..S for the proposals ``flat`` (indices into B*N): final and per-stage outputs."""
        n = self.cfg.num_proposals
        batch_idx = torch.div(flat, n, rounding_mode="floor").to(stage_boxes[0].dtype)
        part_q = _batched(self.part_query.weight)
        out: dict[str, list] = {"stage_mu": [], "stage_sigma": [], "stage_part_query": []}
        mu = sigma = None
        for s in range(self.cfg.num_stages):
            boxes = stage_boxes[s].reshape(-1, 4)[flat]
            q = stage_queries[s].reshape(-1, stage_queries[s].shape[-1])[flat]
            rois = torch.cat([batch_idx[:, None], boxes], dim=1)
            mu, sigma, part_q, _ = self.kpt_stage(s, p2, rois, q, part_q)
            if keep_stages:
                out["stage_mu"].append(mu)
                out["stage_sigma"].append(sigma)
                out["stage_part_query"].append(part_q)
        return {"mu": mu, "sigma": sigma, **out}

    def _keypoint_chains(self, p2, stage_boxes, stage_queries, flat: torch.Tensor, keep_stages: bool) -> dict:
        """:meth:`_keypoint_chain` over proposal chunks. Eager CPU inference splits the proposals into chunks
        (about four per thread) and runs them in ``torch.get_num_threads()`` worker threads, each with one
        intra-op thread: per-proposal work needs no synchronisation, whereas thousands of small OpenMP
        parallel regions stall whenever another process takes a core. Results are identical to one chunk."""
        threads = torch.get_num_threads()
        eager_cpu = eager_cpu_inference(p2)
        chunked = self.cfg.conv_impl == "winograd" or (self.cfg.parallel_chunks and threads > 1)
        if not eager_cpu or not chunked or flat.numel() <= 8:
            return self._keypoint_chain(p2, stage_boxes, stage_queries, flat, keep_stages)
        size = max(4, min(16, -(-flat.numel() // (4 * threads))))
        chunks = list(flat.split(size))
        inference = torch.is_inference_mode_enabled()

        def work(c):
            # grad / inference mode are thread-local: the workers must run under the caller's
            with torch.inference_mode(inference), torch.no_grad():
                return self._keypoint_chain(p2, stage_boxes, stage_queries, c, keep_stages)

        if threads > 1 and self.cfg.parallel_chunks:
            parts = list(_worker_pool(threads).map(work, chunks))
        else:
            parts = [work(c) for c in chunks]
        out = {k: torch.cat([p[k] for p in parts]) for k in ("mu", "sigma")}
        for k in ("stage_mu", "stage_sigma", "stage_part_query"):
            out[k] = [torch.cat([p[k][s] for p in parts]) for s in range(len(parts[0][k]))]
        return out

    @staticmethod
    def _final_outputs(logits, boxes, mu, sigma) -> dict:
        """Spec 7: pose score = sigmoid(logit) * mean_k mean_c (1 - sigma); keypoints to input pixels with the
        unclipped box. (B, N, ...) in, (B, N, ...) out."""
        kp_score = (1 - sigma).mean(-1)                                    # (B, N, K)
        prob = logits[..., 0].sigmoid()
        wh = (boxes[..., 2:] - boxes[..., :2])[:, :, None, :]              # (B, N, 1, 2)
        xy = (mu + 0.5) * wh + boxes[:, :, None, :2]
        return {"scores": prob * kp_score.mean(-1), "logits": logits[..., 0], "boxes": boxes,
                "keypoints": torch.cat([xy, kp_score[..., None]], dim=-1), "sigma": sigma}

    def forward(self, images: torch.Tensor, targets: list[dict] | None = None,
                image_sizes: torch.Tensor | None = None):
        if image_sizes is None:
            if targets is not None and all("image_size" in t for t in targets):
                image_sizes = torch.stack([torch.as_tensor(t["image_size"]) for t in targets]).to(images.device)
            else:
                h, w = images.shape[-2:]
                image_sizes = torch.tensor([[h, w]], device=images.device).expand(images.shape[0], 2)
        if self.training:
            if targets is None:
                raise ValueError("QueryPose.forward: training needs targets")
            return self.losses(images, targets, image_sizes)
        if self.cfg.fast_topk > 0:
            return self.decode_fast(images, image_sizes, self.cfg.fast_topk)
        out = self.decode(images, image_sizes)
        return {k: v for k, v in out.items() if k != "stages"}

    # ---- training ----------------------------------------------------------------------------------------
    def losses(self, images: torch.Tensor, targets: list[dict], image_sizes: torch.Tensor) -> dict:
        """Deep-supervised set loss (spec 5, 6). Per stage: match, run the keypoint decoder on the matched
        queries only, focal / L1 / GIoU on boxes and RLE on keypoints. Keys: ``loss_*`` for the last stage,
        ``loss_*_{s}`` for stage s < S-1."""
        cfg = self.cfg
        feats = self.features(images)
        b, n = images.shape[0], cfg.num_proposals
        dev = images.device
        wh = image_sizes.flip(-1).to(images.dtype)
        tgts = []
        for i, t in enumerate(targets):
            boxes_t = t["boxes"].to(dev, images.dtype).reshape(-1, 4)
            tgts.append({"labels": torch.zeros(len(boxes_t), dtype=torch.long, device=dev), "boxes": boxes_t,
                         "keypoints": t["keypoints"].to(dev, images.dtype).reshape(len(boxes_t), self.num_keypoints, 3),
                         "image_size_xyxy": torch.cat([wh[i], wh[i]])})
        # Official code (Sparse R-CNN SetCriterion): GT people of the global batch, averaged over processes, >= 1
        num_boxes = global_normalizer(torch.tensor(float(sum(len(t["boxes"]) for t in tgts)), device=dev))

        boxes = self.initial_boxes(image_sizes)
        query = _batched(self.init_proposal_features.weight, b)
        part_q = _batched(self.part_query.weight)
        write_back = not cfg.light and cfg.query_handoff in ("official", "serial")
        losses: dict[str, torch.Tensor] = {}
        for s in range(cfg.num_stages):
            logits, new_boxes, query = self.box_stage(s, feats, boxes, query)
            indices = self.matcher(logits.detach(), new_boxes.detach(), tgts)
            boxes = new_boxes.detach()
            # matched slots, image-major, ascending proposal index (spec 0.3)
            flat = torch.cat([i * n + pi for i, (pi, _) in enumerate(indices)])
            gt_boxes = torch.cat([t["boxes"][gi] for t, (_, gi) in zip(tgts, indices)])
            gt_kpts = torch.cat([t["keypoints"][gi] for t, (_, gi) in zip(tgts, indices)])
            sizes = torch.cat([t["image_size_xyxy"][None].expand(len(gi), 4) for t, (_, gi) in zip(tgts, indices)])
            stage_losses = self._box_losses(logits, new_boxes, flat, gt_boxes, sizes, num_boxes)
            if len(flat) > 0:
                sel_boxes = boxes.reshape(b * n, 4)[flat]
                batch_idx = torch.div(flat, n, rounding_mode="floor").to(sel_boxes.dtype)
                rois = torch.cat([batch_idx[:, None], sel_boxes], dim=1)
                sel_q = query.reshape(b * n, -1)[flat]
                mu, sigma, part_q, q_ref = self.kpt_stage(s, feats[0], rois, sel_q, part_q)
                stage_losses["loss_kps"] = cfg.kpt_weight * self._kpt_loss(mu, sigma, gt_kpts, sel_boxes, num_boxes)
                if write_back:
                    # Official code (spec 0.2): refined matched queries are written into the next stage's input.
                    query = query.reshape(b * n, -1).index_put((flat,), q_ref).view(b, n, -1)
            else:
                stage_losses["loss_kps"] = logits.sum() * 0.0
            suffix = "" if s == cfg.num_stages - 1 else f"_{s}"
            if cfg.deep_supervision or s == cfg.num_stages - 1:
                losses.update({k + suffix: v for k, v in stage_losses.items()})
        return losses

    def _box_losses(self, logits, boxes, flat, gt_boxes, sizes, num_boxes) -> dict:
        cfg = self.cfg
        flat_logits = logits.reshape(-1, logits.shape[-1])
        labels = torch.zeros_like(flat_logits)
        labels[flat, 0] = 1.0
        loss_ce = sigmoid_focal_loss(flat_logits, labels, cfg.focal_alpha, cfg.focal_gamma, "sum") / num_boxes
        src = boxes.reshape(-1, 4)[flat]
        loss_bbox = F.l1_loss(src / sizes, gt_boxes / sizes, reduction="sum") / num_boxes
        loss_giou = generalized_box_iou_loss(src, gt_boxes, reduction="sum") / num_boxes
        return {"loss_ce": cfg.class_weight * loss_ce, "loss_bbox": cfg.l1_weight * loss_bbox,
                "loss_giou": cfg.giou_weight * loss_giou}

    def _kpt_loss(self, mu, sigma, gt_kpts, boxes, num_boxes) -> torch.Tensor:
        """RLE (Eq. 4, spec 5): targets in the frame of the matched query's detached predicted box; keypoints
        that are unlabelled or outside that box get no loss. Divided by num_boxes * K."""
        x1y1 = boxes[:, None, :2]
        wh = (boxes[:, 2:] - boxes[:, :2])[:, None, :]
        rel = gt_kpts[..., :2] - x1y1                                      # (n, K, 2)
        target = rel / wh - 0.5
        inside = ((rel >= 0) & (rel <= wh)).all(-1)
        w = ((gt_kpts[..., 2] > 0) & inside).to(mu.dtype)[..., None].expand_as(mu)
        return rle_loss(mu, sigma, target, w, self.flow, num_boxes * self.num_keypoints)

    # ---- prediction --------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, batch: dict, test_cfg) -> list[PoseResult]:
        scales = [float(x) for x in getattr(test_cfg, "scales", [1.0])]
        if scales != [1.0]:
            from ..config import ConfigError
            raise ConfigError(f"test.scales: QueryPose predicts at one scale (the official code has no "
                              f"multi-scale test); expected [1.0], got {scales}")
        images = batch["images"]
        metas = batch["metas"]
        sizes = torch.tensor([list(m["input_size"]) for m in metas], device=images.device)
        out = self(images, image_sizes=sizes)
        if getattr(test_cfg, "flip", False):
            out = self._fuse_flip(out, self(self._flip_images(images, sizes), image_sizes=sizes), sizes)
        return [self._to_result(out, i, metas[i], test_cfg) for i in range(len(metas))]

    def _to_result(self, out: dict, i: int, meta: dict, test_cfg) -> PoseResult:
        """Spec 7 / detector_postprocess: map to original pixels, clip boxes, drop empty ones (keypoints are
        not clipped), keypoints back to COCO pixel indices (the official json export's -0.5), sort by score,
        apply ``test_cfg.score_threshold`` / ``max_people``."""
        inv = torch.as_tensor(np.asarray(meta["inverse"], dtype=np.float64), dtype=torch.float64)
        boxes = out["boxes"][i].double()
        kpts = out["keypoints"][i].double()
        scores = out["scores"][i].double()
        a, t = inv[:, :2], inv[:, 2]
        # our keypoints carry detectron2's +0.5 (pixel-edge) convention; ``inverse`` maps pixel indices
        corners = (boxes.view(-1, 2, 2) - 0.5) @ a.T + t + 0.5             # (N, 2, 2) continuous corners
        boxes = torch.cat([corners.min(1).values, corners.max(1).values], dim=1)
        oh, ow = meta["orig_size"]
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, ow)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, oh)
        xy = (kpts[..., :2] - 0.5) @ a.T + t                               # pixel indices (COCO json frame)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        keep &= scores > getattr(test_cfg, "score_threshold", 0.0)
        order = torch.argsort(scores[keep], descending=True, stable=True)[: getattr(test_cfg, "max_people", 100)]
        idx = keep.nonzero()[:, 0][order]
        k3 = torch.cat([xy, kpts[..., 2:]], dim=-1)
        pidx = out["proposal_index"][i] if "proposal_index" in out else torch.arange(len(scores))
        extras = {"proposal_index": pidx[idx].cpu().numpy()}
        return PoseResult(boxes[idx].float().cpu().numpy(), k3[idx].float().cpu().numpy(),
                          scores[idx].float().cpu().numpy(), extras)


    # ---- fast inference: keypoints only for proposals that can reach the top-k ----------------------------
    def decode_fast(self, images: torch.Tensor, image_sizes: torch.Tensor, k: int) -> dict:
        """Exact top-``k`` people with less work (ours).

        At inference the box decoder never reads the keypoint decoder (spec 0.2) and each proposal's keypoint
        chain is independent of the other proposals, so all box stages run first and the keypoint stages
        only for the ``k`` proposals with the highest class probability p. Since pose score =
        p * mean(1 - sigma) <= p, any other proposal whose p exceeds the k-th best pose score found is decoded
        too (eager mode; rare), so the returned top-k equals the full model's top-k. Returns (B, k, ...)
        tensors sorted by score plus ``proposal_index`` (B, k). Under tracing / ONNX export the widening
        step is skipped (fixed top-k by class probability).
        """
        feats = self.features(images)
        b, n = images.shape[0], self.cfg.num_proposals
        k = min(k, n)
        boxes = self.initial_boxes(image_sizes)
        query = _batched(self.init_proposal_features.weight, b)
        stage_boxes, stage_queries, logits = [], [], boxes.new_zeros(b, n, 1)
        for s in range(self.cfg.num_stages):
            logits, boxes, query = self.box_stage(s, feats, boxes, query)
            stage_boxes.append(boxes)
            stage_queries.append(query)
        prob = logits[..., 0].sigmoid()                                    # (B, N)
        sel = prob.topk(k, dim=1).indices                                  # (B, k)
        decoded = self._decode_keypoints_for(feats, stage_boxes, stage_queries, logits, sel)
        if not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
            while True:
                kth = decoded["scores"].topk(k, dim=1).values[:, -1:]     # (B, 1)
                done = torch.zeros_like(prob, dtype=torch.bool).scatter_(1, decoded["proposal_index"], True)
                extra = (prob > kth) & ~done
                if not bool(extra.any()):
                    break
                m = int(extra.sum(1).max())
                more = torch.where(extra, prob, prob.new_tensor(-1.0)).topk(m, dim=1).indices   # (B, m)
                valid = extra.gather(1, more)
                new = self._decode_keypoints_for(feats, stage_boxes, stage_queries, logits, more)
                # an image with fewer new candidates than m pads with already-decoded ones: score them out
                new["scores"] = torch.where(valid, new["scores"], new["scores"].new_tensor(-1.0))
                decoded = {key: torch.cat([decoded[key], new[key]], dim=1) for key in decoded}
        top = decoded["scores"].topk(k, dim=1).indices
        return {key: v.gather(1, top.view(b, k, *([1] * (v.dim() - 2))).expand(b, k, *v.shape[2:]))
                for key, v in decoded.items()}

    def _decode_keypoints_for(self, feats, stage_boxes, stage_queries, logits, sel: torch.Tensor) -> dict:
        """Run the S keypoint stages for the proposals ``sel`` (B, m) -> (B, m, ...) final outputs."""
        b, m = sel.shape
        n = self.cfg.num_proposals
        flat = (sel + torch.arange(b, device=sel.device)[:, None] * n).reshape(-1)
        kp = self._keypoint_chains(feats[0], stage_boxes, stage_queries, flat, False)
        boxes = stage_boxes[-1].reshape(b * n, 4)[flat].view(b, m, 4)
        out = self._final_outputs(logits.gather(1, sel[..., None]), boxes, kp["mu"].view(b, m, -1, 2),
                                  kp["sigma"].view(b, m, -1, 2))
        out["proposal_index"] = sel
        return out

    # ---- flip test (ours; the official code has none, spec 0.6) ------------------------------------------
    def _flip_images(self, images: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        """Mirror each image inside its own unpadded width (padding stays on the right)."""
        w_pad = images.shape[-1]
        col = torch.arange(w_pad, device=images.device)[None]              # (1, W)
        w = sizes[:, 1:2].to(col)                                          # (B, 1)
        src = torch.where(col < w, w - 1 - col, col)                       # (B, W)
        return images.gather(3, src[:, None, None, :].expand_as(images))

    def _unflip(self, out: dict, sizes: torch.Tensor) -> dict:
        """Predictions on mirrored images -> the original frame (x -> w - x, left/right keypoints swapped)."""
        w = sizes[:, 1].to(out["boxes"].dtype)[:, None]                   # (B, 1)
        boxes = torch.stack([w - out["boxes"][..., 2], out["boxes"][..., 1], w - out["boxes"][..., 0],
                             out["boxes"][..., 3]], dim=-1)
        perm = flip_permutation(self.num_keypoints).to(out["keypoints"].device)
        kp = out["keypoints"][:, :, perm]
        kp = torch.cat([w[..., None, None] - kp[..., :1], kp[..., 1:]], dim=-1)
        res = dict(out)
        res.update(boxes=boxes, keypoints=kp, sigma=out["sigma"][:, :, perm])
        return res

    def _fuse_flip(self, out: dict, flipped: dict, sizes: torch.Tensor) -> dict:
        """Average each person with its mirrored-image counterpart (one-to-one Hungarian matching on box IoU
        >= ``flip_fusion_iou``); unmatched people keep their own prediction."""
        from scipy.optimize import linear_sum_assignment
        from torchvision.ops import box_iou

        fl = self._unflip(flipped, sizes)
        fused = {k: v.clone() for k, v in out.items()}
        for b in range(out["boxes"].shape[0]):
            iou = box_iou(out["boxes"][b], fl["boxes"][b])
            rows, cols = linear_sum_assignment((-iou).cpu().numpy())
            rows, cols = torch.as_tensor(rows), torch.as_tensor(cols)
            ok = iou[rows, cols] >= self.cfg.flip_fusion_iou
            r, c = rows[ok], cols[ok]
            for key in ("scores", "boxes", "keypoints", "sigma"):
                fused[key][b, r] = 0.5 * (out[key][b, r] + fl[key][b, c])
        return fused


# ==========================================================================================================
# Keypoint flip pairs, build, data transform, registration
# ==========================================================================================================
def flip_permutation(num_keypoints: int) -> torch.Tensor:
    """Index permutation swapping left / right keypoints (the dataset's flip index)."""
    return torch.tensor(np.array(_keypoint_meta(num_keypoints).flip_index), dtype=torch.long)


def build_querypose(cfg) -> QueryPose:
    """Build from a full :class:`regpose.config.Config` (keypoint count from ``data.format``)."""
    from ..data.keypoints import get_meta

    return QueryPose(cfg.model, num_keypoints=get_meta(cfg.data.format).num_keypoints)


class QueryPoseSample:
    """Raw sample -> {"image", "target", "meta"} for QueryPose (picklable for loader workers).

    Geometry: the one-stage pipeline of :mod:`regpose.data.transforms` (detectron2 semantics; train: flip,
    multi-scale short side, crop; test: short side 800, max 1333). Image: RGB 0..255 normalised by the model's
    mean / std (official order of operations). Target: ``boxes`` (M, 4) xyxy, ``keypoints`` (M, K, 3) in
    network-input pixels with detectron2's +0.5 (pixel edges; what the official loss sees), ``labels`` (M,),
    ``image_size`` (h, w) of the unpadded input.
    """

    def __init__(self, geometric, pixel_mean, pixel_std):
        self.geometric = geometric
        self.mean = torch.tensor(pixel_mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(pixel_std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, raw: dict) -> dict:
        from ..data.transforms import make_meta

        s = self.geometric(raw)
        arr = s["image"] if s["image"].flags.writeable else np.array(s["image"])
        img = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).to(torch.float32)
        h, w = img.shape[-2:]
        kp = np.array(s["keypoints"], dtype=np.float32)
        kp = kp.reshape(len(s["boxes"]), kp.shape[-2] if kp.ndim == 3 else -1, 3)
        labelled = kp[..., 2] > 0
        kp[..., :2] = np.where(labelled[..., None], kp[..., :2] + 0.5, 0.0)   # detectron2 +0.5; unlabelled 0
        target = {"boxes": torch.from_numpy(np.asarray(s["boxes"], dtype=np.float32).reshape(-1, 4)),
                  "keypoints": torch.from_numpy(kp),
                  "labels": torch.zeros(len(kp), dtype=torch.long),
                  "image_size": torch.tensor([h, w], dtype=torch.long)}
        return {"image": (img - self.mean) / self.std, "target": target, "meta": make_meta(s)}


def querypose_transform(cfg, train: bool) -> QueryPoseSample:
    from ..data.transforms import onestage_test_transforms, onestage_train_transforms

    geo = onestage_train_transforms(cfg.data) if train else onestage_test_transforms(cfg.data)
    return QueryPoseSample(geo, cfg.model.pixel_mean, cfg.model.pixel_std)


register_method(MethodSpec("querypose", QueryPoseConfig, build_querypose, family="onestage",
                           transform=querypose_transform))
