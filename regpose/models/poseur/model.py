"""Poseur's network (Mao et al., ECCV 2022): backbone + neck + coarse RLE head + keypoint encoder + query decoder.

  backbone levels (strides 4..32) -> ChannelMapper (1x1 conv + GN to C)
    -> memory = features + 2-D sine PE + level embedding          (no transformer encoder in the official code)
    -> coarse RLE head (GAP + FC on the stride-32 level)           mu_f, sigma_f          (paper Sec. 3.1)
    -> keypoint encoder: query = LN(Linear(PE(mu_f), PE(clip(mu_f)))), class embedding = query position
    -> N query-decoder layers: self-attention, EMSDA cross-attention (paper Eq. 1), FFN
       each layer: reference refinement in logit space + an extra additive delta, sigma branch
Mixed precision: the transformer part (coarse head, keypoint encoder, decoder) always computes in float32.
"""
from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from ...data.keypoints import KeypointMeta
from ..backbones import build_backbone
from ..base import PoseModel
from ..layers.deform_attn import MultiScaleDeformableAttention, Sampler
from ..layers.linear import inverse_sigmoid
from ..layers.position import sine_grid_encoding, sine_point_encoding
from ..layers.rle import RealNVP
from ..topdown_regression import CoarseRLEHead, PlainLinear, RLETopDownInference
from .config import PoseurConfig
from .loss import poseur_losses

__all__ = ["Poseur", "ChannelMapper", "PoseurDecoderLayer", "build_poseur"]


# ----------------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------------
def _autocast_off(device: torch.device):
    """A region computed in float32 whatever autocast the caller enabled (mmcv ``force_fp32``)."""
    return torch.autocast(device.type, enabled=False) if device.type in ("cpu", "cuda") else nullcontext()


class ConvGN(nn.Module):
    """1x1 conv (no bias) + GroupNorm(32), no activation (mmdet ChannelMapper's ConvModule)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int = 32):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.gn = nn.GroupNorm(groups, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gn(self.conv(x))


class ChannelMapper(nn.Module):
    """Per-level projection of the backbone maps to a common width (spec 2.1)."""

    def __init__(self, in_channels: list[int], out_channels: int):
        super().__init__()
        self.convs = nn.ModuleList(ConvGN(c, out_channels) for c in in_channels)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return [conv(f) for conv, f in zip(self.convs, feats)]


def _mlp3(dim: int, out: int) -> nn.Sequential:
    """Linear-ReLU-Linear-ReLU-Linear (official ``fc_coord_branches`` layout: indices 0, 2, 4)."""
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim), nn.ReLU(inplace=True),
                         nn.Linear(dim, out))


def _sigma_branch(dim: int) -> nn.Sequential:
    """Official code: three stacked linears with no activation in between (spec 2.6)."""
    return nn.Sequential(nn.Linear(dim, dim), nn.Linear(dim, dim), PlainLinear(dim, 2))


class PoseurDecoderLayer(nn.Module):
    """Post-norm decoder layer: self-attention -> LN -> EMSDA/MSDA cross-attention -> LN -> FFN -> LN (spec 2.5)."""

    def __init__(self, cfg: PoseurConfig, num_levels: int, sampler: Sampler = "auto"):
        super().__init__()
        C = cfg.embed_dim
        self.self_attn = (nn.MultiheadAttention(C, cfg.self_attn_heads, dropout=cfg.dropout, batch_first=True)
                          if cfg.self_attention else None)
        self.norm1 = nn.LayerNorm(C) if cfg.self_attention else None
        self.cross_attn = MultiScaleDeformableAttention(C, cfg.num_heads, num_levels, cfg.num_points,
                                                        mode=cfg.cross_attention, sampler=sampler)
        self.norm2 = nn.LayerNorm(C)
        self.linear1 = nn.Linear(C, cfg.ffn_dim)
        self.linear2 = nn.Linear(cfg.ffn_dim, C)
        self.norm3 = nn.LayerNorm(C)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, reference: torch.Tensor, memory: torch.Tensor,
                spatial_shapes: list[tuple[int, int]], groups: int = 1) -> torch.Tensor:
        """x, pos (B, G*K, C); reference (B, G*K, 2); memory (B, N, C). Query groups do not attend to each other."""
        B, Q, C = x.shape
        if self.self_attn is not None:
            xg, pg = x.reshape(B * groups, Q // groups, C), pos.reshape(B * groups, Q // groups, C)
            q = xg + pg
            attn = self.self_attn(q, q, xg, need_weights=False)[0].reshape(B, Q, C)
            x = self.norm1(x + self.dropout(attn))
        x = self.norm2(x + self.dropout(self.cross_attn(x, reference, memory, spatial_shapes, query_pos=pos)))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(x))))
        return self.norm3(x + self.dropout(ffn))


# ----------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------
class Poseur(RLETopDownInference, PoseModel):
    """Backbone + neck + coarse RLE head + keypoint encoder + query decoder (see the module docstring). Eval
    ``forward`` gives the last layer's (mu, sigma) (B, K, 2), decoded by the shared :class:`RLETopDownInference`.

    Runtime options (``cfg.runtime``, same numbers): ``attention_sampler`` of the deformable cross-attention and
    ``channels_last`` (backbone and neck in NHWC memory: faster on CPU, memory tokens without a copy)."""

    def __init__(self, cfg: PoseurConfig, keypoints: KeypointMeta, *, attention_sampler: Sampler = "auto",
                 channels_last: bool = True):
        super().__init__()
        if cfg.embed_dim % 2 or cfg.embed_dim % cfg.num_heads:
            raise ValueError(f"embed_dim {cfg.embed_dim} must be even and divisible by num_heads {cfg.num_heads}")
        self.cfg = cfg
        self.set_keypoints(keypoints)
        K, C = self.num_keypoints, cfg.embed_dim
        levels = sorted(set(cfg.feature_levels))
        self.backbone = build_backbone(cfg.backbone, levels)
        self.neck = ChannelMapper(self.backbone.channels, C)
        L = len(levels)
        self.level_embed = nn.Parameter(torch.empty(L, C))
        # Official code: the coarse head reads only the last (stride-32) neck level, before PE ("backbone_s").
        self.coarse_head = CoarseRLEHead(C, K)
        # keypoint encoder (spec 2.4)
        self.class_embed = nn.Embedding(K, C)                  # used as the query positional embedding
        if cfg.query_init == "coarse":
            self.query_proj = nn.Linear(2 * C, C)              # PE(r) ++ PE(clip(r)) -> content query
            self.query_norm = nn.LayerNorm(C)
        else:                                                  # Deformable DETR baseline (Table 1a)
            self.query_content = nn.Embedding(K, C)
            self.reference_proj = nn.Linear(C, 2)
        # decoder and per-layer heads
        n = 1 if cfg.share_decoder_weights else cfg.num_decoder_layers
        self.layers = nn.ModuleList(PoseurDecoderLayer(cfg, L, attention_sampler) for _ in range(n))
        self.coord_branches = nn.ModuleList(_mlp3(C, 2) for _ in range(n))          # reference refinement
        self.coord_output_branches = nn.ModuleList(_mlp3(C, 2) for _ in range(n))   # extra output delta
        self.sigma_branches = nn.ModuleList(_sigma_branch(C) for _ in range(n))
        # flows (training only)
        self.coarse_flow = RealNVP(cfg.flow_hidden, cfg.flow_layers, tuple(cfg.prior_mean))
        self.decoder_flow = RealNVP(cfg.flow_hidden, cfg.flow_layers, tuple(cfg.prior_mean))
        self.register_buffer("flip_pairs", torch.as_tensor(keypoints.flip_pairs, dtype=torch.long).reshape(-1, 2),
                             persistent=False)
        self._pe_cache: dict = {}
        self.reset_parameters()
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)

    # ---------------------------------------------------------------- init
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Official initialisation for training from scratch (spec 3.5): Xavier-uniform on every >= 2-D transformer
        parameter (which also overrides Deformable DETR's zero init of sampling offsets / attention weights), the
        directional sampling-offset bias kept, level embeddings ~ N(0, 1), neck convs Xavier; per-layer head MLPs
        and flows keep PyTorch's default init."""
        transformer = [self.coarse_head, self.class_embed, *self.layers]
        transformer += ([self.query_proj] if self.cfg.query_init == "coarse"
                        else [self.query_content, self.reference_proj])
        for module in transformer:
            for p in module.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
        for layer in self.layers:
            attn = layer.cross_attn      # 1-D biases (incl. the directional sampling-offset grid) are untouched
            if attn.mode == "emsda":
                # official shapes: value_proj_weight (M*C, C/M), value_proj_bias (M, C/M), both 2-D Embeddings
                nn.init.xavier_uniform_(attn.value_proj_weight.view(-1, attn.head_dim))
        nn.init.normal_(self.level_embed)
        for conv in self.neck.convs:
            nn.init.xavier_uniform_(conv.conv.weight)

    # ---------------------------------------------------------------- pieces
    def _grid_pe(self, h: int, w: int, ref: torch.Tensor) -> torch.Tensor:
        key = (h, w, ref.device, ref.dtype)
        pe = self._pe_cache.get(key)
        if pe is None or torch.jit.is_tracing():
            # Official code: mmcv SinePositionalEncoding(normalize=True, offset=-0.5), y half first (spec 2.2)
            pe = sine_grid_encoding(h, w, self.cfg.embed_dim // 2, offset=-0.5, device=ref.device, dtype=ref.dtype)
            if not torch.jit.is_tracing():
                self._pe_cache[key] = pe
        return pe

    def _level_pe(self, lvl: int, h: int, w: int, ref: torch.Tensor) -> torch.Tensor:
        """Sine PE + level embedding of one level as tokens (h*w, C)."""
        return (self._grid_pe(h, w, ref) + self.level_embed[lvl].view(-1, 1, 1)).flatten(1).t()

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Backbone + neck: one (B, C, h, w) map per level, strides 4..32."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.neck(self.backbone(images))

    def memory(self, feats: list[torch.Tensor]):
        """Memory tokens (B, N, C) = features + 2-D sine PE + level embedding (spec 2.2; the official code has no
        encoder layers) and the levels' spatial shapes."""
        shapes = [(int(f.shape[-2]), int(f.shape[-1])) for f in feats]
        # channels-last maps flatten to (B, h*w, C) without a copy; one concatenation, one in-place add
        tokens = torch.cat([f.flatten(2).transpose(1, 2) for f in feats], dim=1)
        pe = torch.cat([self._level_pe(lvl, h, w, feats[0]) for lvl, (h, w) in enumerate(shapes)], dim=0)
        return tokens.add_(pe), shapes

    def init_queries(self, coarse_mu: torch.Tensor, groups: int):
        """Keypoint encoder (spec 2.4 / 3.3): content (B, G*K, C), position (B, G*K, C), reference (B, G*K, 2)."""
        B, K, _ = coarse_mu.shape
        C = self.cfg.embed_dim
        pos = self.class_embed.weight.unsqueeze(0).expand(B, -1, -1).repeat(1, groups, 1)
        if self.cfg.query_init == "learned":
            ref = self.reference_proj(self.class_embed.weight).sigmoid().unsqueeze(0).expand(B, -1, -1)
            content = self.query_content.weight.unsqueeze(0).expand(B, -1, -1)
            return content.repeat(1, groups, 1), pos, ref.repeat(1, groups, 1)
        ref = coarse_mu.detach()                                   # Official code: proposals are detached
        if groups > 1:
            ref = torch.cat([ref, self._noisy_copies(ref, groups - 1)], dim=1)
        pe = torch.cat([sine_point_encoding(ref, C // 2), sine_point_encoding(ref.clamp(0, 1), C // 2)], dim=-1)
        content = self.query_norm(self.query_proj(pe))
        return content, pos, ref

    def _noisy_copies(self, ref: torch.Tensor, copies: int) -> torch.Tensor:
        """Noisy reference points (spec 3.3): ``copies`` duplicates of the proposal; copies*points_per_group of
        the copies*K points (same indices for the whole batch) get N(0, variance I) noise clipped to [-1, 1], the
        perturbed points are clipped to [-0.7, 1.7]."""
        B, K, _ = ref.shape
        noisy = ref.repeat(1, copies, 1)                                                 # (B, copies*K, 2)
        n = min(copies * self.cfg.noise_points_per_group, copies * K)
        idx = torch.randperm(copies * K, device=ref.device)[:n]
        noise = (torch.randn(B, n, 2, device=ref.device, dtype=ref.dtype) * math.sqrt(self.cfg.noise_variance))
        noisy[:, idx] = (noisy[:, idx] + noise.clamp(-1, 1)).clamp(-0.7, 1.7)
        return noisy

    def _layer(self, i: int) -> int:
        return 0 if self.cfg.share_decoder_weights else i

    def decode(self, content, pos, ref, memory, shapes, groups: int = 1, all_layers: bool = True) -> dict:
        """Run the query decoder. Returns per-layer lists (all layers, or only the last when ``all_layers`` is
        False): ``hidden`` states, ``references`` (reference after each layer) and ``layer`` (weight index)."""
        x = content
        out = {"hidden": [], "references": [], "layer": []}
        n = self.cfg.num_decoder_layers
        for i in range(n):
            j = self._layer(i)
            x = self.layers[j](x, pos, ref, memory, shapes, groups)
            # Official code: reference refined in logit space and NOT detached between layers (spec 2.6)
            new_ref = (self.coord_branches[j](x) + inverse_sigmoid(ref)).sigmoid()
            if all_layers or i == n - 1:
                out["hidden"].append(x)
                out["references"].append(new_ref)
                out["layer"].append(j)
            ref = new_ref
        return out

    def transformer(self, feats: list[torch.Tensor], groups: int = 1, all_layers: bool = True) -> dict:
        """Official ``PoseurTransformer.forward``: memory, coarse RLE head on the stride-32 level, keypoint encoder
        and query decoder. ``coarse_mu``/``coarse_sigma`` (B, K, 2), ``init_reference`` (B, G*K, 2) and the lists
        of :meth:`decode`."""
        memory, shapes = self.memory(feats)
        coarse_mu, coarse_sigma = self.coarse_head(feats[-1])
        content, pos, ref = self.init_queries(coarse_mu, groups)
        out = self.decode(content, pos, ref, memory, shapes, groups, all_layers)
        out.update(coarse_mu=coarse_mu, coarse_sigma=coarse_sigma, init_reference=ref.clamp(0, 1),
                   spatial_shapes=shapes)
        return out

    def output_heads(self, out: dict) -> dict:
        """Each kept layer's keypoints ``mu`` = refined reference + an extra, un-squashed delta (Official code: not
        fed to the next layer) and ``sigma`` = sigmoid of the sigma branch."""
        out["mu"] = [r + self.coord_output_branches[j](x) for j, x, r in zip(out["layer"], out["hidden"],
                                                                             out["references"])]
        out["sigma"] = [self.sigma_branches[j](x).sigmoid() for j, x in zip(out["layer"], out["hidden"])]
        return out

    def forward_all(self, images: torch.Tensor, groups: int = 1, all_layers: bool = True) -> dict:
        """Every intermediate output: the dict of :meth:`transformer` plus per-layer ``mu`` and ``sigma``.

        Mixed precision as the official code: backbone, neck and the per-layer output heads run under the caller's
        autocast (``Poseur.forward`` is ``auto_fp16``), the transformer in float32 (``PoseurTransformer.forward``
        is ``force_fp32``: autocast off, fp16 inputs cast up)."""
        feats = self.features(images)
        with _autocast_off(images.device):
            out = self.transformer([f.float() for f in feats], groups, all_layers)
        return self.output_heads(out)

    # ---------------------------------------------------------------- contract
    def forward(self, images: torch.Tensor, targets: list[dict] | None = None):
        """Training: RLE losses; eval: last layer's (mu (B, K, 2), sigma (B, K, 2)) in normalised crop coords."""
        if targets is None:
            out = self.forward_all(images, 1, all_layers=False)
            return out["mu"][-1], out["sigma"][-1]
        groups = 1 + (self.cfg.num_noise_groups if (self.training and self.cfg.query_init == "coarse") else 0)
        out = self.forward_all(images, groups, all_layers=True)
        target = torch.stack([t["coords"] for t in targets]).to(images)             # (B, K, 2)
        weight = torch.stack([t["coord_weights"] for t in targets]).to(images)      # (B, K, 2)
        return poseur_losses(out, target, weight, groups, self.coarse_flow, self.decoder_flow)


def build_poseur(cfg, keypoints: KeypointMeta) -> Poseur:
    """The network a full ``Config`` describes: the paper's knobs from ``cfg.model``, the keypoint layout
    ``keypoints``, and the runtime options ``cfg.runtime.attention_sampler`` / ``cfg.runtime.channels_last``."""
    return Poseur(cfg.model, keypoints, attention_sampler=cfg.runtime.attention_sampler,
                  channels_last=cfg.runtime.channels_last)
