"""TFPose's network: backbone -> input projection -> deformable encoder -> keypoint-query decoder.

    crop (B, 3, H, W) -> ResNet C3..C5 -> 1x1 conv + GN to C -> + level / 2-D sine position embeddings
      -> N_E deformable encoder layers (p2p attention)            -> memory M (B, N, C)
      -> N_D decoder layers over K learnable keypoint queries:
           q2q self-attention, p2q deformable cross-attention at the current keypoints, FFN,
           per-layer MLP -> delta, J_d = sigmoid(sigmoid^-1(J_{d-1}) + delta)            (paper Eq. 4)
      -> K (x, y) in [0, 1] of the crop (last layer at test time)
    training only: a deconvolution head on one level of the memory predicts the auxiliary heatmaps (Eq. 6); it
    never runs in eval and is not part of exported graphs.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...codecs.multiscale import resolve_test_scales
from ...data.keypoints import KeypointMeta
from ...ops import topdown_finalize
from ...structures import PoseResult
from ..backbones import build_backbone
from ..base import PoseModel
from ..layers.deform_attn import MultiScaleDeformableAttention, Sampler
from ..layers.init import heatmap_head_init_
from ..layers.linear import inverse_sigmoid
from ..layers.position import sine_grid_encoding
from ..topdown_regression import flip_back_coords
from .config import TFPoseConfig, check_data
from .decode import flip_center, tfpose_results
from .loss import tfpose_losses

__all__ = ["TFPose", "TFPoseEncoderLayer", "TFPoseDecoderLayer", "TFPoseDecoder", "AuxHeatmapHead", "CoordinateMLP",
           "deformable_sampling_flops", "build_tfpose"]


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
                 sampler: Sampler = "auto"):
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
                 q2q_attention: bool = True, sampler: Sampler = "auto"):
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

    def __init__(self, cfg: TFPoseConfig, num_levels: int, sampler: Sampler = "auto"):
        super().__init__()
        C = cfg.embed_dim
        self.layers = nn.ModuleList([
            TFPoseDecoderLayer(C, cfg.ffn_width, cfg.num_heads, num_levels, cfg.num_points, cfg.dropout,
                               cfg.q2q_attention, sampler) for _ in range(cfg.num_decoder_layers)])
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
        heatmap_head_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_layer(self.deconv_layers(x))


# ----------------------------------------------------------------------------------------------------------
# The network
# ----------------------------------------------------------------------------------------------------------
class TFPose(PoseModel):
    """Backbone -> input projection -> deformable encoder -> keypoint-query decoder (see the module docstring).

    ``forward(images)`` in eval returns the last layer's normalised coordinates (B, K, 2) (x, y) in [0, 1] of the
    crop (UDP: x_px = u (W - 1)); in training ``forward(images, targets)`` returns the weighted losses.

    Runtime option (``cfg.runtime.attention_sampler``, same numbers): the deformable sampling kernel. ``auto``:
    grid_sample in training (its backward is 1.1-1.8x faster than embedding_bag's for per-head values on CPU), the
    gather sampler in eval, grid_sample when exporting."""

    size_divisibility = 32
    output_names = ("coords",)               # eval forward: (B, K, 2) normalised crop coordinates

    def __init__(self, cfg: TFPoseConfig, keypoints: KeypointMeta, udp: bool = True, *,
                 attention_sampler: Sampler = "auto"):
        super().__init__()
        self.cfg = cfg
        self.udp = udp
        self.attention_sampler = attention_sampler
        self.set_keypoints(keypoints)
        K = self.num_keypoints
        C, L = cfg.embed_dim, len(cfg.levels)
        # timm features_only (index l - 1 is C_l); the shared builder also honours a reduced ResNet stem_width.
        self.backbone = build_backbone(cfg.backbone, tuple(lv - 1 for lv in cfg.levels))
        # Assumption (spec §2): 1x1 conv + GroupNorm(32) per level, as Deformable DETR's input projection.
        self.input_proj = nn.ModuleList([nn.Sequential(nn.Conv2d(c, C, 1), nn.GroupNorm(32, C))
                                         for c in self.backbone.channels])
        self.level_embed = nn.Parameter(torch.empty(L, C))
        self.encoder = nn.ModuleList([
            TFPoseEncoderLayer(C, cfg.ffn_width, cfg.num_heads, L, cfg.num_points, cfg.dropout, attention_sampler)
            for _ in range(cfg.num_encoder_layers)])
        # Assumption (spec §3): one Embedding(K, 2C) holding the query position P (first half) and content Q
        # (second half), as Deformable DETR splits it.
        self.query_embed = nn.Embedding(K, 2 * C)
        # J_0 = sigmoid(R), R learnable (paper Eq. 4). Assumption (spec §5.5): R ~ N(0, 1) in logit space.
        self.reference_logits = nn.Parameter(torch.empty(K, 2))
        self.decoder = TFPoseDecoder(cfg, L, attention_sampler)
        if cfg.aux_heatmap:
            self.aux_index = list(cfg.levels).index(cfg.aux_level)
            self.aux_head = AuxHeatmapHead(C, K, cfg.aux_level - 2, cfg.aux_channels)
        else:
            self.aux_index, self.aux_head = -1, None
        self.register_buffer("flip_pairs", torch.as_tensor(keypoints.flip_pairs, dtype=torch.long).reshape(-1, 2),
                             persistent=False)
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
        if self.attention_sampler == "auto":
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
        layer_coords = self.decode(memory, shapes, all_layers=True)
        heatmaps = (self.aux_heatmaps(memory, shapes) if self.aux_head is not None and self.cfg.aux_loss_weight > 0
                    else None)
        return tfpose_losses(self.cfg, layer_coords, heatmaps, targets)

    # ------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_coords(self, images: torch.Tensor, flip: bool = False) -> torch.Tensor:
        """Normalised coordinates (B, K, 2) of the last decoder layer, averaged with the mirrored crop's when
        ``flip`` (spec §10: mean of the two, no heatmap shift)."""
        coords = self(images)
        if flip:
            center = flip_center(self.udp, images.shape[-1])
            coords = 0.5 * (coords + flip_back_coords(self(images.flip(3)), self.flip_pairs, center))
        return coords

    @torch.no_grad()
    def predict(self, batch: dict, test_cfg) -> list[PoseResult]:
        """One single-person result per crop in original pixels (``meta["inverse"]``). TFPose predicts no keypoint
        confidence: keypoint scores are 1 and the instance score is the box score (spec §10)."""
        resolve_test_scales(test_cfg, type(self).__name__, multi_scale=False)
        images = batch["images"]
        coords = self.predict_coords(images, bool(getattr(test_cfg, "flip", False)))
        return tfpose_results(coords, batch["metas"], (int(images.shape[-2]), int(images.shape[-1])))

    def finalize(self, result: PoseResult, meta: dict) -> PoseResult:
        """Per image: mmpose's top-down rescoring (box score x mean keypoint score above 0.2, here x 1, so the box
        score stays) then OKS-NMS over the image's crops."""
        return topdown_finalize(result, self.keypoints.sigmas, self.cfg.oks_nms_threshold, rescoring=False)

    # ------------------------------------------------------------------------------------------------------
    def extra_flops(self, input_hw: tuple[int, int], batch: int = 1) -> dict[str, int]:
        """FLOPs (2 per MAC) of work ``torch.utils.flop_counter`` cannot see: the bilinear deformable sampling
        (embedding_bag / grid_sample). See :func:`deformable_sampling_flops`."""
        return {"deformable_sampling": deformable_sampling_flops(self.cfg, self.num_keypoints, input_hw, batch)}


def deformable_sampling_flops(cfg: TFPoseConfig, num_keypoints: int, input_hw: tuple[int, int], batch: int = 1) -> int:
    """FLOPs (2 per MAC) of the deformable sampling in eval: every encoder token and every keypoint query gathers
    heads x levels x points samples, each a 4-corner bilinear weighted sum over C / heads channels (the attention
    weight folded into the corner weights, as our gather sampler computes it)."""
    h, w = input_hw
    tokens = sum(math.ceil(h / 2 ** lv) * math.ceil(w / 2 ** lv) for lv in cfg.levels)
    queries = tokens * cfg.num_encoder_layers + num_keypoints * cfg.num_decoder_layers
    per_query_macs = cfg.num_heads * len(cfg.levels) * cfg.num_points * 4 * (cfg.embed_dim // cfg.num_heads)
    return 2 * batch * queries * per_query_macs


def build_tfpose(cfg, keypoints: KeypointMeta) -> TFPose:
    """The network a full ``Config`` describes: the paper's knobs from ``cfg.model``, the keypoint layout
    ``keypoints``, UDP from ``data.augment.topdown.udp`` and the runtime option ``cfg.runtime.attention_sampler``."""
    check_data(cfg)
    return TFPose(cfg.model, keypoints, udp=bool(cfg.data.augment.topdown.udp),
                  attention_sampler=cfg.runtime.attention_sampler)
