"""TFPose (Mao et al., "TFPose: Direct Human Pose Estimation with Transformers", arXiv 2103.15320).

Top-down, one person per crop::

    crop (B, 3, H, W) -> ResNet C3..C5 -> 1x1 conv + GN to C -> + level / 2-D sine position embeddings
      -> N_E deformable encoder layers (p2p attention)            -> memory M (B, N, C)
      -> N_D decoder layers over K learnable keypoint queries:
           q2q self-attention, p2q deformable cross-attention at the current keypoints, FFN,
           per-layer MLP -> delta, J_d = sigmoid(sigmoid^-1(J_{d-1}) + delta)            (paper Eq. 4)
      -> K (x, y) in [0, 1] of the crop (last layer at test time)
    training only: L1 on every decoder layer (Eq. 5) + lambda x heatmap MSE of a deconvolution head on one
    level of the memory (Eq. 6-7); the heatmap branch never runs in eval and is not part of exported graphs.

No official code was released: ``../shared/reference/tfpose/spec.md`` (the paper plus the structure pinned by its
GFLOPs columns) is the authority. Choices the paper leaves open are marked ``# Assumption (spec §x)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import ConfigError
from ..structures import PoseResult
from .backbones import BackboneConfig, build_backbone
from .base import PoseModel
from .layers.deform_attn import MultiScaleDeformableAttention
from .layers.linear import inverse_sigmoid
from .layers.position import sine_grid_encoding
from .registry import MethodSpec, register_method

__all__ = ["TFPoseConfig", "TFPose", "TFPoseEncoderLayer", "TFPoseDecoderLayer", "TFPoseDecoder",
           "AuxHeatmapHead", "CoordinateMLP", "coordinate_l1_loss", "joints_mse_loss",
           "flip_back_coords", "build_tfpose", "tfpose_transform", "TFPoseTransform", "tfpose_lr_rules",
           "deformable_sampling_flops"]


# ----------------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------------
@dataclass
class TFPoseConfig:
    """TFPose's knobs. Defaults are the paper's best setting (R-50, N_E = 6, N_D = 6, C = 256, q2q on, aux on).

    The ``udp`` switch of the spec is ``data.augment.topdown.udp`` (one source of truth for the crop, the targets,
    the flip test and the decoding); TFPose configs set it to true as the paper does."""
    backbone: BackboneConfig = field(default_factory=BackboneConfig)   # resnet50 (main results) / resnet18
    # Assumption (spec §2): C3-C5 (strides 8/16/32); the paper's text says C2-C5 but its GFLOPs rule C2 out.
    levels: list[int] = field(default_factory=lambda: [3, 4, 5])
    num_keypoints: int = 17
    embed_dim: int = 256                        # C: 128 / 256 (Table 2)
    ffn_dim: int = 0                            # 0: 4 * embed_dim (1024 for C = 256, confirmed by the FLOPs)
    num_heads: int = 8
    num_points: int = 4                         # sampling points per head and level
    num_encoder_layers: int = 6                 # N_E: 4 (light model) / 6; the R-18 ablations use 2 or 6
    num_decoder_layers: int = 6                 # N_D (Table 3)
    dropout: float = 0.1
    q2q_attention: bool = True                  # query-to-query self-attention in the decoder (Table 1)
    iterative_refine: bool = True               # Eq. 4; off: every layer refines the fixed J_0 (Deformable DETR)
    detach_ref: bool = False                    # detach J_{d-1} between layers (Deformable DETR does; Poseur not)
    deep_supervision: bool = True               # L1 on every decoder layer (Eq. 5); off: last layer only
    coord_loss_weight: float = 1.0
    aux_heatmap: bool = True                    # auxiliary heatmap loss in training (Table 4)
    aux_level: int = 5                          # memory level the heatmap head reads (5: C5 x8, 3: C3 x2)
    aux_channels: int = 256                     # deconvolution width (SimpleBaseline)
    aux_loss_weight: float = 10.0               # lambda of Eq. 7
    aux_sigma: float = 2.0                      # Gaussian sigma on the stride-4 heatmap
    oks_nms_threshold: float = 0.9              # per-image OKS-NMS over crops (mmpose top-down evaluation)
    # Deformable sampling kernel (same numbers). auto: grid_sample in training (its backward is 1.1-1.8x faster
    # than embedding_bag's for per-head values on CPU), the gather sampler in eval, grid_sample when exporting.
    sampler: Literal["auto", "gather", "grid_sample"] = "auto"

    def __post_init__(self):
        if not self.levels or any(int(v) not in (2, 3, 4, 5) for v in self.levels) or \
                list(self.levels) != sorted(set(self.levels)):
            raise ValueError(f"levels: expected increasing backbone levels from 2..5 (C2..C5), got {self.levels}")
        if self.aux_heatmap and self.aux_level not in self.levels:
            raise ValueError(f"aux_level: {self.aux_level} is not one of the memory levels {self.levels}")
        if self.embed_dim % self.num_heads or self.embed_dim % 2:
            raise ValueError(f"embed_dim: {self.embed_dim} must be even and divisible by num_heads {self.num_heads}")
        if self.num_decoder_layers < 1:
            raise ValueError(f"num_decoder_layers: expected >= 1, got {self.num_decoder_layers}")
        if self.num_encoder_layers < 0:
            raise ValueError(f"num_encoder_layers: expected >= 0, got {self.num_encoder_layers}")
        if self.embed_dim % 32:
            raise ValueError(f"embed_dim: {self.embed_dim} must be a multiple of 32 (GroupNorm(32) in the input "
                             f"projection)")

    @property
    def ffn_width(self) -> int:
        return self.ffn_dim or 4 * self.embed_dim


# ----------------------------------------------------------------------------------------------------------
# Small pieces
# ----------------------------------------------------------------------------------------------------------
class CoordinateMLP(nn.Module):
    """Per-decoder-layer MLP C -> C -> C -> 2 (ReLU) predicting the logit-space refinement delta J_d."""

    def __init__(self, dim: int):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, 2)])
        # Assumption (spec §5.4): the last layer starts small so J_d starts near J_{d-1}; Xavier gain 0.01 rather
        # than zeros keeps gradients flowing into the whole decoder from the first step.
        nn.init.xavier_uniform_(self.layers[-1].weight, gain=0.01)
        nn.init.zeros_(self.layers[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        return self.layers[-1](x)


class FFN(nn.Module):
    """Transformer feed-forward block C -> F -> C (ReLU, dropout) with residual and post-LayerNorm."""

    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.dropout2(self.linear2(self.dropout1(F.relu(self.linear1(x))))))


# ----------------------------------------------------------------------------------------------------------
# Encoder and decoder layers (Deformable DETR, post-norm)
# ----------------------------------------------------------------------------------------------------------
class TFPoseEncoderLayer(nn.Module):
    """p2p attention: multi-scale deformable self-attention of every memory token around its own position, then an
    FFN (spec §4)."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, num_levels: int, num_points: int, dropout: float,
                 sampler: str = "auto"):
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(dim, num_heads, num_levels, num_points, "msda", sampler)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)
        self.ffn = FFN(dim, ffn_dim, dropout)

    def forward(self, src: torch.Tensor, pos: torch.Tensor, reference_points: torch.Tensor,
                spatial_shapes: Sequence[tuple[int, int]]) -> torch.Tensor:
        # src, pos (B, N, C); reference_points (B, N, 2): each token's own normalised centre, shared by all levels
        out = self.self_attn(src, reference_points, src, spatial_shapes, query_pos=pos)
        return self.ffn(self.norm(src + self.dropout(out)))


class TFPoseDecoderLayer(nn.Module):
    """q2q self-attention over the K keypoint queries (optional, Table 1), p2q deformable cross-attention sampling
    the memory around the current keypoint estimates, FFN (spec §5)."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, num_levels: int, num_points: int, dropout: float,
                 q2q_attention: bool = True, sampler: str = "auto"):
        super().__init__()
        if q2q_attention:
            self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
            self.dropout_sa = nn.Dropout(dropout)
            self.norm_sa = nn.LayerNorm(dim)
        else:
            self.self_attn = None
        self.cross_attn = MultiScaleDeformableAttention(dim, num_heads, num_levels, num_points, "msda", sampler)
        self.dropout_ca = nn.Dropout(dropout)
        self.norm_ca = nn.LayerNorm(dim)
        self.ffn = FFN(dim, ffn_dim, dropout)

    def forward(self, query: torch.Tensor, query_pos: torch.Tensor, reference_points: torch.Tensor,
                memory: torch.Tensor, spatial_shapes: Sequence[tuple[int, int]]) -> torch.Tensor:
        # query, query_pos (B, K, C); reference_points (B, K, 2) in [0, 1]; memory (B, N, C)
        if self.self_attn is not None:
            qk = query + query_pos                                      # queries = keys = Q + P, values = Q
            out = self.self_attn(qk, qk, query, need_weights=False)[0]
            query = self.norm_sa(query + self.dropout_sa(out))
        out = self.cross_attn(query, reference_points, memory, spatial_shapes, query_pos=query_pos)
        query = self.norm_ca(query + self.dropout_ca(out))
        return self.ffn(query)


class TFPoseDecoder(nn.Module):
    """N_D decoder layers, each followed by its own coordinate MLP; coarse-to-fine refinement in logit space."""

    def __init__(self, cfg: TFPoseConfig, num_levels: int):
        super().__init__()
        C = cfg.embed_dim
        self.layers = nn.ModuleList([
            TFPoseDecoderLayer(C, cfg.ffn_width, cfg.num_heads, num_levels, cfg.num_points, cfg.dropout,
                               cfg.q2q_attention, cfg.sampler) for _ in range(cfg.num_decoder_layers)])
        self.coord_heads = nn.ModuleList([CoordinateMLP(C) for _ in range(cfg.num_decoder_layers)])
        self.iterative_refine, self.detach_ref = cfg.iterative_refine, cfg.detach_ref

    def forward(self, query: torch.Tensor, query_pos: torch.Tensor, initial: torch.Tensor, memory: torch.Tensor,
                spatial_shapes: Sequence[tuple[int, int]], all_layers: bool = True) -> list[torch.Tensor]:
        """initial J_0 (B, K, 2) in [0, 1] -> list of J_d (B, K, 2) for every layer (or the last only)."""
        reference = initial
        outputs = []
        last = len(self.layers) - 1
        for d, (layer, head) in enumerate(zip(self.layers, self.coord_heads)):
            query = layer(query, query_pos, reference, memory, spatial_shapes)
            if not (all_layers or self.iterative_refine or d == last):
                continue                                               # fixed references: heads are independent
            coords = (inverse_sigmoid(reference) + head(query)).sigmoid()  # Eq. 4
            outputs.append(coords)
            if self.iterative_refine:                                  # Deformable DETR detaches J_d (d >= 1)
                reference = coords.detach() if self.detach_ref else coords
        return outputs if all_layers else outputs[-1:]


# ----------------------------------------------------------------------------------------------------------
# Auxiliary heatmap branch (training only)
# ----------------------------------------------------------------------------------------------------------
class AuxHeatmapHead(nn.Module):
    """SimpleBaseline-style deconvolutions on one memory level up to stride 4, then a 1x1 conv to K heatmaps
    (paper Sec. 3.4; layout and init as in Poseur's disabled heatmap path, spec §6)."""

    def __init__(self, in_channels: int, num_keypoints: int, num_deconvs: int, channels: int = 256):
        super().__init__()
        layers = []
        for i in range(num_deconvs):
            layers += [nn.ConvTranspose2d(in_channels if i == 0 else channels, channels, 4, stride=2, padding=1,
                                          bias=False),
                       nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
        self.deconv_layers = nn.Sequential(*layers)
        self.final_layer = nn.Conv2d(channels if num_deconvs else in_channels, num_keypoints, 1)
        for m in self.modules():
            if isinstance(m, (nn.ConvTranspose2d, nn.Conv2d)):
                nn.init.normal_(m.weight, std=0.001)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_layer(self.deconv_layers(x))


# ----------------------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------------------
# Flip test
# ----------------------------------------------------------------------------------------------------------
def flip_back_coords(coords: torch.Tensor, flip_pairs: torch.Tensor, flip_center: float = 1.0) -> torch.Tensor:
    """Predictions on the mirrored crop -> original crop: swap left/right joints and u_x := flip_center - u_x.

    With UDP the normalised x is x_px / (W - 1) and the mirror of pixel x is (W - 1) - x, so ``flip_center = 1``
    exactly; without UDP (u = x_px / W) it is (W - 1) / W."""
    perm = torch.arange(coords.shape[-2], device=coords.device)
    if len(flip_pairs):
        perm[flip_pairs[:, 0]] = flip_pairs[:, 1]
        perm[flip_pairs[:, 1]] = flip_pairs[:, 0]
    coords = coords[..., perm, :]
    return torch.stack((flip_center - coords[..., 0], coords[..., 1]), dim=-1)


# ----------------------------------------------------------------------------------------------------------
# The network
# ----------------------------------------------------------------------------------------------------------
class TFPose(PoseModel):
    """Backbone -> input projection -> deformable encoder -> keypoint-query decoder (see the module docstring).

    ``forward(images)`` in eval returns the last layer's normalised coordinates (B, K, 2) (x, y) in [0, 1] of the
    crop (UDP: x_px = u (W - 1)); in training ``forward(images, targets)`` returns the weighted losses."""

    size_divisibility = 32

    def __init__(self, cfg: TFPoseConfig, flip_pairs=(), sigmas: np.ndarray | None = None, udp: bool = True):
        super().__init__()
        self.cfg = cfg
        self.udp = udp
        self.num_keypoints = K = cfg.num_keypoints
        C, L = cfg.embed_dim, len(cfg.levels)
        # timm features_only (index l - 1 is C_l); the shared builder also honours a reduced ResNet stem_width.
        self.backbone = build_backbone(cfg.backbone, tuple(lv - 1 for lv in cfg.levels))
        # Assumption (spec §2): 1x1 conv + GroupNorm(32) per level, as Deformable DETR's input projection.
        self.input_proj = nn.ModuleList([nn.Sequential(nn.Conv2d(c, C, 1), nn.GroupNorm(32, C))
                                         for c in self.backbone.channels])
        self.level_embed = nn.Parameter(torch.empty(L, C))
        self.encoder = nn.ModuleList([
            TFPoseEncoderLayer(C, cfg.ffn_width, cfg.num_heads, L, cfg.num_points, cfg.dropout, cfg.sampler)
            for _ in range(cfg.num_encoder_layers)])
        # Assumption (spec §3): one Embedding(K, 2C) holding the query position P (first half) and content Q
        # (second half), as Deformable DETR splits it.
        self.query_embed = nn.Embedding(K, 2 * C)
        # J_0 = sigmoid(R), R learnable (paper Eq. 4). Assumption (spec §5.5): R ~ N(0, 1) in logit space.
        self.reference_logits = nn.Parameter(torch.empty(K, 2))
        self.decoder = TFPoseDecoder(cfg, L)
        if cfg.aux_heatmap:
            self.aux_index = list(cfg.levels).index(cfg.aux_level)
            self.aux_head = AuxHeatmapHead(C, K, cfg.aux_level - 2, cfg.aux_channels)
        else:
            self.aux_index, self.aux_head = -1, None
        self.register_buffer("flip_pairs", torch.as_tensor(np.asarray(flip_pairs, dtype=np.int64).reshape(-1, 2)),
                             persistent=False)
        self.sigmas = None if sigmas is None else np.asarray(sigmas, dtype=np.float64)
        self._geometry_cache: dict = {}
        self._reset_parameters()
        self.train(self.training)                                   # picks the deformable sampler for the mode

    @torch.no_grad()
    def _reset_parameters(self) -> None:
        """Deformable DETR's init: Xavier on every transformer matrix, then the deformable attention's own init;
        level embeddings N(0, 1); input projections Xavier with zero bias."""
        for module in (self.encoder, self.decoder.layers):
            for p in module.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MultiScaleDeformableAttention):
                m.reset_parameters()
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)
        nn.init.normal_(self.level_embed)
        nn.init.normal_(self.reference_logits)

    # ------------------------------------------------------------------------------------------------------
    def _geometry(self, shapes: list[tuple[int, int]], device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Sine position encodings (N, C) and encoder reference points (N, 2) of the flattened levels, cached
        per input geometry (constants of the graph)."""
        key = (tuple(shapes), device, dtype)
        if key not in self._geometry_cache:
            C = self.cfg.embed_dim
            pos, refs = [], []
            for h, w in shapes:
                # Assumption (spec §3): Deformable DETR's normalised sine encoding (pixel centres, offset -0.5,
                # scale 2 pi, temperature 10000), C/2 channels per axis.
                pos.append(sine_grid_encoding(h, w, C // 2, offset=-0.5, device=device, dtype=dtype)
                           .flatten(1).t())                                      # (h*w, C)
                ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h
                xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w
                refs.append(torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2))  # (x, y)
            if len(self._geometry_cache) > 8:
                self._geometry_cache.clear()
            self._geometry_cache[key] = (torch.cat(pos), torch.cat(refs))
        return self._geometry_cache[key]

    def train(self, mode: bool = True):
        if self.cfg.sampler == "auto":
            for m in self.modules():
                if isinstance(m, MultiScaleDeformableAttention):
                    m.sampler = "grid_sample" if mode else "auto"
        return super().train(mode)

    def _apply(self, fn, recurse=True):
        self._geometry_cache = {}
        return super()._apply(fn, recurse)

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """images (B, 3, H, W) -> memory (B, N, C) and the level shapes [(H_l, W_l)] (level-major, row-major)."""
        feats = [proj(f) for proj, f in zip(self.input_proj, self.backbone(images))]   # L x (B, C, H_l, W_l)
        shapes = [(int(f.shape[-2]), int(f.shape[-1])) for f in feats]
        src = torch.cat([f.flatten(2).transpose(1, 2) for f in feats], 1)              # (B, N, C)
        pos, refs = self._geometry(shapes, src.device, src.dtype)
        level_pos = torch.cat([self.level_embed[i].expand(h * w, -1) for i, (h, w) in enumerate(shapes)])
        pos = (pos + level_pos).unsqueeze(0)                                            # (1, N, C)
        refs = refs.unsqueeze(0).expand(src.shape[0], -1, -1)                          # (B, N, 2)
        for layer in self.encoder:
            src = layer(src, pos, refs, shapes)
        return src, shapes

    def decode(self, memory: torch.Tensor, shapes: list[tuple[int, int]], all_layers: bool) -> list[torch.Tensor]:
        B, C = memory.shape[0], self.cfg.embed_dim
        # repeat (a copy), not expand: views of parameters made under no_grad trip torch's module tracker (FLOPs)
        query_pos, query = self.query_embed.weight.unsqueeze(0).repeat(B, 1, 1).split(C, dim=2)  # (B, K, C) each
        initial = self.reference_logits.sigmoid().unsqueeze(0).expand(B, -1, -1)        # J_0 (B, K, 2)
        return self.decoder(query, query_pos, initial, memory, shapes, all_layers)

    def aux_heatmaps(self, memory: torch.Tensor, shapes: list[tuple[int, int]]) -> torch.Tensor:
        """The memory tokens of ``aux_level`` back to a map (B, C, H_l, W_l) -> heatmaps (B, K, H/4, W/4)."""
        start = sum(h * w for h, w in shapes[:self.aux_index])
        h, w = shapes[self.aux_index]
        x = memory[:, start:start + h * w].transpose(1, 2).reshape(memory.shape[0], -1, h, w)
        return self.aux_head(x)

    def forward(self, images: torch.Tensor, targets: list[dict] | None = None):
        memory, shapes = self.encode(images)
        if targets is None:
            return self.decode(memory, shapes, all_layers=False)[-1]                    # (B, K, 2)
        return self.losses(self.decode(memory, shapes, all_layers=True), memory, shapes, targets)

    def losses(self, layer_coords: list[torch.Tensor], memory: torch.Tensor, shapes, targets: list[dict]) -> dict:
        """Eq. 7: sum over decoder layers of the L1 loss (Eq. 5) + lambda x heatmap MSE (Eq. 6)."""
        c = self.cfg
        ref = layer_coords[-1]
        target = torch.stack([t["coords"] for t in targets]).to(ref)                    # (B, K, 2)
        weight = torch.stack([t["coord_weights"] for t in targets]).to(ref)             # (B, K, 2)
        supervised = layer_coords if c.deep_supervision else layer_coords[-1:]
        offset = len(layer_coords) - len(supervised)
        losses = {f"loss_coord_{offset + d}": c.coord_loss_weight * coordinate_l1_loss(p, target, weight)
                  for d, p in enumerate(supervised)}
        if self.aux_head is not None and c.aux_loss_weight > 0:
            heatmaps = self.aux_heatmaps(memory, shapes)
            hm_target = torch.stack([t["heatmaps"] for t in targets]).to(heatmaps)
            hm_weight = torch.stack([t["heatmap_weights"] for t in targets]).to(heatmaps)
            if hm_target.shape[-2:] != heatmaps.shape[-2:]:
                raise ValueError(f"heatmap targets {tuple(hm_target.shape[-2:])} do not match the auxiliary head's "
                                 f"output {tuple(heatmaps.shape[-2:])}: the input size must be a multiple of "
                                 f"{2 ** c.aux_level} and the targets input / 4")
            losses["loss_heatmap"] = c.aux_loss_weight * joints_mse_loss(heatmaps, hm_target, hm_weight)
        return losses

    # ------------------------------------------------------------------------------------------------------
    def coords_to_crop_pixels(self, coords: torch.Tensor, input_hw: tuple[int, int]) -> torch.Tensor:
        """Normalised (B, K, 2) -> crop pixels: u (W - 1) with UDP (spec §5/§7), u W without."""
        h, w = input_hw
        scale = torch.tensor([w - 1.0, h - 1.0] if self.udp else [float(w), float(h)], dtype=coords.dtype,
                             device=coords.device)
        return coords * scale

    @torch.no_grad()
    def predict_coords(self, images: torch.Tensor, flip: bool = False) -> torch.Tensor:
        """Normalised coordinates (B, K, 2) of the last decoder layer, averaged with the mirrored crop's when
        ``flip`` (spec §10: mean of the two, no heatmap shift)."""
        coords = self(images)
        if flip:
            w = images.shape[-1]
            center = 1.0 if self.udp else (w - 1.0) / w
            coords = 0.5 * (coords + flip_back_coords(self(images.flip(3)), self.flip_pairs, center))
        return coords

    @torch.no_grad()
    def predict(self, batch: dict, test_cfg) -> list[PoseResult]:
        """One single-person result per crop in original pixels (``meta["inverse"]``). TFPose predicts no keypoint
        confidence: keypoint scores are 1 and the instance score is the box score (spec §10)."""
        images = batch["images"]
        coords = self.predict_coords(images, bool(getattr(test_cfg, "flip", False)))
        return self.decode_results(coords, batch["metas"], (int(images.shape[-2]), int(images.shape[-1])))

    def decode_results(self, coords: torch.Tensor, metas: list[dict], input_hw: tuple[int, int]) -> list[PoseResult]:
        """Normalised coordinates (B, K, 2) of B crops -> one :class:`PoseResult` per crop in original pixels
        (keypoint scores 1, instance score = box score). Also decodes ONNX Runtime outputs."""
        from .rle_regression import topdown_results

        coords = torch.as_tensor(coords).float().cpu()
        # topdown_results maps u -> u (W, H) -> image; hand it crop pixels / (W, H) so UDP's (W - 1) holds.
        pixels = self.coords_to_crop_pixels(coords, input_hw)
        normalised = pixels / torch.tensor([input_hw[1], input_hw[0]], dtype=pixels.dtype)
        results = topdown_results(normalised, torch.ones(coords.shape[:2]), metas, input_hw)
        for r in results:
            r.scores = np.asarray(r.extras["box_score"], dtype=np.float32).reshape(-1)
        return results

    def finalize(self, result: PoseResult, meta: dict) -> PoseResult:
        """Per image: mmpose's top-down rescoring (box score x mean keypoint score above 0.2, here x 1, so the box
        score stays) then OKS-NMS over the image's crops."""
        from ..inference.topdown import topdown_finalize
        return topdown_finalize(result, self.sigmas, self.cfg.oks_nms_threshold, rescoring=False)

    def export_module(self) -> nn.Module:
        """Eval-mode ``forward(images) -> (B, K, 2)``; the auxiliary heatmap head is not part of the graph."""
        return self

    # ------------------------------------------------------------------------------------------------------
    def extra_flops(self, input_hw: tuple[int, int], batch: int = 1) -> dict[str, int]:
        """FLOPs (2 per MAC) of work ``torch.utils.flop_counter`` cannot see: the bilinear deformable sampling
        (embedding_bag / grid_sample). See :func:`deformable_sampling_flops`."""
        return {"deformable_sampling": deformable_sampling_flops(self.cfg, input_hw, batch)}


def deformable_sampling_flops(cfg: TFPoseConfig, input_hw: tuple[int, int], batch: int = 1) -> int:
    """FLOPs (2 per MAC) of the deformable sampling in eval: every encoder token and every keypoint query gathers
    heads x levels x points samples, each a 4-corner bilinear weighted sum over C / heads channels (the attention
    weight folded into the corner weights, as our gather sampler computes it)."""
    h, w = input_hw
    tokens = sum(math.ceil(h / 2 ** lv) * math.ceil(w / 2 ** lv) for lv in cfg.levels)
    queries = tokens * cfg.num_encoder_layers + cfg.num_keypoints * cfg.num_decoder_layers
    per_query_macs = cfg.num_heads * len(cfg.levels) * cfg.num_points * 4 * (cfg.embed_dim // cfg.num_heads)
    return 2 * batch * queries * per_query_macs


def tfpose_lr_rules(scope: Literal["offsets_and_refs", "whole_transformer"] = "offsets_and_refs",
                    mult: float = 0.1) -> list[dict]:
    """``train.lr_rules`` entries for the paper's reduced learning rate (Sec. 4.1, "decreased by a factor of 10").

    Assumption (spec §8): ``offsets_and_refs`` reads it as Deformable DETR's rule (sampling-offset projections and
    the reference matrix R at x0.1); ``whole_transformer`` lowers the encoder, decoder, queries, R and the
    coordinate MLPs."""
    if scope == "offsets_and_refs":
        return [{"pattern": r"sampling_offsets|reference_logits", "lr_mult": mult}]
    if scope == "whole_transformer":
        return [{"pattern": r"^(encoder|decoder|query_embed|reference_logits|level_embed)", "lr_mult": mult}]
    raise ValueError(f"lr_mult_scope: expected 'offsets_and_refs' or 'whole_transformer', got {scope!r}")


# ----------------------------------------------------------------------------------------------------------
# Builder, data transform, registration
# ----------------------------------------------------------------------------------------------------------
def _check_data(cfg) -> None:
    from ..data.keypoints import get_meta

    info = get_meta(cfg.data.format)
    if cfg.model.num_keypoints != len(info.sigmas):
        raise ConfigError(f"model.num_keypoints: {cfg.model.num_keypoints} does not match data.format "
                          f"'{cfg.data.format}' ({len(info.sigmas)} keypoints)")
    w, h = (int(v) for v in cfg.data.input_size)
    stride = 2 ** max(cfg.model.levels)
    if w % stride or h % stride:
        raise ConfigError(f"data.input_size: {w}x{h} must be a multiple of {stride} (the coarsest memory level "
                          f"C{max(cfg.model.levels)}), e.g. 192x256")


def build_tfpose(cfg) -> TFPose:
    from ..data.keypoints import get_meta

    _check_data(cfg)
    info = get_meta(cfg.data.format)
    return TFPose(cfg.model, info.flip_pairs, info.sigmas, udp=bool(cfg.data.augment.topdown.udp))


class TFPoseTransform:
    """Raw top-down sample -> ``{"image", "target", "meta"}`` with the shared mmpose top-down pipeline (centre /
    scale with padding 1.25, flip, half body, scale / rotation, affine crop; ``data.augment.topdown``) and TFPose's
    targets (spec §6-7):

      coords (K, 2)          joint / (W - 1, H - 1) under UDP (x / (W, H) without), in [0, 1] inside the crop
      coord_weights (K, 2)   labelled (v > 0) and inside the crop
      heatmaps (K, H/4, W/4) UDP Gaussians (sigma ``aux_sigma``), only when the auxiliary loss is on
      heatmap_weights (K,)   labelled and the Gaussian touches the map

    Picklable for data-loader workers."""

    def __init__(self, cfg, train: bool):
        from ..data.transforms import topdown_test_transforms, topdown_train_transforms

        _check_data(cfg)
        self.train = train
        self.input_size = tuple(int(v) for v in cfg.data.input_size)                 # (W, H)
        self.udp = bool(cfg.data.augment.topdown.udp)
        m = cfg.model
        self.heatmaps = train and m.aux_heatmap and m.aux_loss_weight > 0
        self.heatmap_size = (self.input_size[0] // 4, self.input_size[1] // 4)
        self.sigma = float(m.aux_sigma)
        self.pipeline = topdown_train_transforms(cfg.data) if train else topdown_test_transforms(cfg.data)

    def targets(self, keypoints: np.ndarray) -> dict:
        """Targets of one person's (K, 3) keypoints in network-input pixels."""
        from ..data.targets import normalized_coords, udp_heatmaps

        w, h = self.input_size
        _, weights = normalized_coords(keypoints, self.input_size)                 # labelled and inside the crop
        norm = np.array([w - 1.0, h - 1.0] if self.udp else [float(w), float(h)])
        coords = (np.asarray(keypoints, dtype=np.float64)[:, :2] / norm).astype(np.float32)
        target = {"coords": torch.from_numpy(coords), "coord_weights": torch.from_numpy(weights)}
        if self.heatmaps:
            # The paper generates the auxiliary targets with UDP (Sec. 4.1), whatever the crop convention.
            hm, hm_w = udp_heatmaps(keypoints, self.input_size, self.heatmap_size, self.sigma)
            target.update(heatmaps=torch.from_numpy(hm), heatmap_weights=torch.from_numpy(hm_w))
        return target

    def __call__(self, raw: dict, rng=None) -> dict:
        from ..data.transforms import make_meta, to_tensor_normalize

        sample = self.pipeline(raw, rng)
        person = sample.get("person_index", -1)
        target = {}
        if person is not None and person >= 0:
            target = self.targets(sample["keypoints"][person])
        elif self.train:
            raise ValueError("top-down training samples need a ground-truth person (person_index >= 0)")
        return {"image": to_tensor_normalize(sample["image"]), "target": target, "meta": make_meta(sample)}


def tfpose_transform(cfg, train: bool) -> TFPoseTransform:
    """TFPose's data pipeline: shared top-down crop and augmentation, coordinate + auxiliary heatmap targets."""
    return TFPoseTransform(cfg, train)


register_method(MethodSpec(name="tfpose", config_cls=TFPoseConfig, build=build_tfpose, family="topdown",
                           transform=tfpose_transform))
