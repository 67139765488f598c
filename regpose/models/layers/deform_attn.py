"""Multi-scale deformable attention in pure PyTorch: Deformable DETR's MSDA and Poseur's EMSDA.

Each query looks at ``num_points`` locations per head and per feature level, placed at learned offsets around its
reference point, and takes a softmax-weighted sum of the bilinearly sampled features (Deformable DETR,
Zhu et al. ICLR 2021, Eq. 3):

* ``mode="msda"``  (Deformable DETR): the value projection runs over *every* memory token first, each head then
  samples its own C/M channels. Cost O(N C^2) for N memory tokens.
* ``mode="emsda"`` (Poseur, paper Eq. 1): heads sample the raw C-dim memory and the per-head projection
  W_i^v (C -> C/M) is applied to the K aggregated vectors only. Cost O(K C^2) with K << N queries. As in the
  official code the projection bias is added in full (also where samples fall outside the map).

Two interchangeable samplers compute the same numbers (bilinear, zero padding, ``align_corners=False``; a
sample at normalised x maps to pixel x * W - 0.5):

* ``"gather"``: the four bilinear corners of every sample, for all heads, levels and points at once, are turned
  into row indices into the flattened memory and weights (bilinear x attention weight); a single
  :func:`torch.nn.functional.embedding_bag` call gathers and sums them. Nothing of size N x heads is ever
  materialised, which is what made the official grid_sample reference slow (it copies the memory once per
  head and samples all channels per head before reducing).
* ``"grid_sample"``: one :func:`torch.nn.functional.grid_sample` per level over all heads (the ONNX-exportable
  form; chosen automatically while exporting or tracing).
"""
from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MultiScaleDeformableAttention", "Sampler", "deformable_sample", "deformable_sample_gather",
           "deformable_sample_grid", "level_start_index"]

Shapes = Sequence[tuple[int, int]]
#: the sampling kernel (a runtime option, ``runtime.attention_sampler``): ``auto`` = gather, grid_sample when exporting
Sampler = Literal["auto", "gather", "grid_sample"]


def level_start_index(spatial_shapes: Shapes) -> list[int]:
    """Offsets of each level in the flattened (level-major, row-major) memory."""
    starts, total = [], 0
    for h, w in spatial_shapes:
        starts.append(total)
        total += int(h) * int(w)
    return starts


def _as_shapes(spatial_shapes) -> list[tuple[int, int]]:
    if isinstance(spatial_shapes, torch.Tensor):
        spatial_shapes = spatial_shapes.tolist()
    return [(int(h), int(w)) for h, w in spatial_shapes]


# ----------------------------------------------------------------------------------------------------------
# Samplers: value (B, N, G, D) with G = 1 (memory shared by every head, EMSDA) or G = M (one slice per head, MSDA)
# locations (B, Q, M, L, P, 2) normalised (x, y); weights (B, Q, M, L, P)  ->  (B, Q, M, D)
# ----------------------------------------------------------------------------------------------------------
def deformable_sample_gather(value: torch.Tensor, spatial_shapes: Shapes, locations: torch.Tensor,
                             weights: torch.Tensor) -> torch.Tensor:
    """Weighted bilinear sampling as one ``embedding_bag`` over all heads, levels, points and corners."""
    B, N, G, D = value.shape
    _, Q, M, L, P, _ = locations.shape
    shapes = _as_shapes(spatial_shapes)
    dev, dt = locations.device, locations.dtype
    hw = torch.tensor(shapes, device=dev, dtype=dt)                                # (L, 2) as (h, w)
    size_xy = hw.flip(-1).view(L, 1, 2)                                             # (L, 1, 2) as (w, h)
    starts = torch.tensor(level_start_index(shapes), device=dev).view(L, 1)
    width = hw[:, 1].long().view(L, 1)

    # Pixel coordinates (align_corners=False); clamp far-away samples so integer conversion stays exact.
    pix = (locations * size_xy - 0.5).clamp(-2.0, None)
    pix = torch.minimum(pix, size_xy + 1)                                           # (B, Q, M, L, P, 2)
    base = pix.floor()
    frac = pix - base
    x0 = base[..., 0].long()
    y0 = base[..., 1].long()
    fx, fy = frac[..., 0], frac[..., 1]
    w_int, h_int = width, hw[:, 0].long().view(L, 1)

    idx, wts = [], []
    for dy in (0, 1):
        wy = fy if dy else 1 - fy
        yi = y0 + dy
        ok_y = (yi >= 0) & (yi < h_int)
        for dx in (0, 1):
            wx = fx if dx else 1 - fx
            xi = x0 + dx
            ok = ok_y & (xi >= 0) & (xi < w_int)
            idx.append(torch.where(ok, starts + yi * w_int + xi, 0))
            wts.append(torch.where(ok, wx * wy, 0.0) * weights)
    idx = torch.stack(idx, -1)                                                      # (B, Q, M, L, P, 4)
    wts = torch.stack(wts, -1)
    # Row of (batch, token, group) in the flattened (B * N * G, D) table.
    batch_off = (torch.arange(B, device=dev) * N).view(B, 1, 1, 1, 1, 1)
    rows = (idx + batch_off) * G
    if G > 1:
        rows = rows + torch.arange(M, device=dev).view(1, 1, M, 1, 1, 1)
    out = F.embedding_bag(rows.reshape(B * Q * M, L * P * 4), value.reshape(B * N * G, D),
                          per_sample_weights=wts.reshape(B * Q * M, L * P * 4).to(value.dtype), mode="sum")
    return out.view(B, Q, M, D)


def deformable_sample_grid(value: torch.Tensor, spatial_shapes: Shapes, locations: torch.Tensor,
                           weights: torch.Tensor, shared: bool | None = None) -> torch.Tensor:
    """Weighted bilinear sampling with one ``grid_sample`` per level (exportable to ONNX). ``shared``: the value
    has one group used by every head (EMSDA); default: inferred from the shape."""
    B, N, G, D = value.shape
    shared = (G == 1) if shared is None else shared
    _, Q, M, L, P, _ = locations.shape
    shapes = _as_shapes(spatial_shapes)
    grids = 2 * locations - 1
    per_level = []
    for lvl, (start, (h, w)) in enumerate(zip(level_start_index(shapes), shapes)):
        v = value[:, start:start + h * w]                                           # (B, HW, G, D)
        if shared:   # one map for all heads: sample every head's points in one call
            v = v.reshape(B, h, w, D).permute(0, 3, 1, 2)                           # (B, D, H, W)
            g = grids[:, :, :, lvl].reshape(B, Q, M * P, 2)
            s = F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)
            per_level.append(s.view(B, D, Q, M, P).permute(0, 2, 3, 4, 1))           # (B, Q, M, P, D)
        else:        # a D-channel slice per head: heads go to the batch axis
            v = v.permute(0, 2, 3, 1).reshape(B * M, D, h, w)
            g = grids[:, :, :, lvl].transpose(1, 2).reshape(B * M, Q, P, 2)
            s = F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)
            per_level.append(s.view(B, M, D, Q, P).permute(0, 3, 1, 4, 2))           # (B, Q, M, P, D)
    sampled = torch.stack(per_level, dim=3)                                         # (B, Q, M, L, P, D)
    return (sampled * weights.unsqueeze(-1)).sum(dim=(3, 4))


def _exporting() -> bool:
    return bool(torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or torch.jit.is_scripting()
                or torch.compiler.is_exporting())


def deformable_sample(value, spatial_shapes, locations, weights, sampler: Sampler = "auto",
                      shared: bool | None = None) -> torch.Tensor:
    """Dispatch to the gather sampler (fast) or the grid_sample one (export); see the module docstring."""
    if sampler == "grid_sample" or (sampler == "auto" and _exporting()):
        return deformable_sample_grid(value, spatial_shapes, locations, weights, shared)
    if sampler not in ("auto", "gather"):
        raise ValueError(f"sampler: expected 'auto', 'gather' or 'grid_sample', got {sampler!r}")
    return deformable_sample_gather(value, spatial_shapes, locations, weights)


# ----------------------------------------------------------------------------------------------------------
# The attention module
# ----------------------------------------------------------------------------------------------------------
class MultiScaleDeformableAttention(nn.Module):
    """Deformable-DETR-style multi-scale deformable attention (MSDA) or Poseur's efficient variant (EMSDA).

    Parameters (names follow mmcv so official checkpoints map one to one):
      sampling_offsets  Linear(C, M*L*P*2), offsets in level pixels, (x, y) order
      attention_weights Linear(C, M*L*P), softmax over L*P per head
      value_proj        Linear(C, C)                         (msda)
      value_proj_weight (M, C, C/M), value_proj_bias (M, C/M) (emsda: per-head projection after sampling)
      output_proj       Linear(C, C)
    ``forward`` returns the projected output; dropout, residual and normalisation belong to the caller.
    """

    def __init__(self, embed_dim: int = 256, num_heads: int = 8, num_levels: int = 4, num_points: int = 4,
                 mode: Literal["msda", "emsda"] = "msda", sampler: Sampler = "auto"):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        if mode not in ("msda", "emsda"):
            raise ValueError(f"mode: expected 'msda' or 'emsda', got {mode!r}")
        self.embed_dim, self.num_heads, self.num_levels, self.num_points = embed_dim, num_heads, num_levels, num_points
        self.head_dim = embed_dim // num_heads
        self.mode, self.sampler = mode, sampler
        self.sampling_offsets = nn.Linear(embed_dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dim, num_heads * num_levels * num_points)
        if mode == "msda":
            self.value_proj = nn.Linear(embed_dim, embed_dim)
        else:
            self.value_proj_weight = nn.Parameter(torch.empty(num_heads, embed_dim, self.head_dim))
            self.value_proj_bias = nn.Parameter(torch.empty(num_heads, self.head_dim))
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Deformable DETR's init: zero offset weights with a bias spreading each head's points along its own
        direction at radius 1..P, uniform attention, Xavier projections."""
        M, L, P = self.num_heads, self.num_levels, self.num_points
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(M, dtype=torch.float32) * (2.0 * math.pi / M)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(M, 1, 1, 2).repeat(1, L, P, 1)
        grid *= torch.arange(1, P + 1, dtype=torch.float32).view(1, 1, P, 1)
        self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        if self.mode == "msda":
            nn.init.xavier_uniform_(self.value_proj.weight)
            nn.init.zeros_(self.value_proj.bias)
        else:
            # Official EMSDA stores W^v as an Embedding (M*C, C/M); Xavier on that 2-D shape.
            flat = self.value_proj_weight.view(M * self.embed_dim, self.head_dim)
            nn.init.xavier_uniform_(flat)
            nn.init.zeros_(self.value_proj_bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def sampling_locations(self, query: torch.Tensor, reference_points: torch.Tensor,
                           spatial_shapes: Shapes) -> tuple[torch.Tensor, torch.Tensor]:
        """Locations (B, Q, M, L, P, 2) in normalised (x, y) and softmaxed weights (B, Q, M, L, P)."""
        B, Q, _ = query.shape
        M, L, P = self.num_heads, self.num_levels, self.num_points
        offsets = self.sampling_offsets(query).view(B, Q, M, L, P, 2)
        weights = self.attention_weights(query).view(B, Q, M, L * P).softmax(-1).view(B, Q, M, L, P)
        shapes = _as_shapes(spatial_shapes)
        if len(shapes) != L:
            raise ValueError(f"expected {L} feature levels, got spatial shapes {shapes}")
        size_xy = torch.tensor([(w, h) for h, w in shapes], device=query.device, dtype=query.dtype)
        if reference_points.dim() == 3:                           # (B, Q, 2): same point on every level
            ref = reference_points[:, :, None, None, None, :]
        elif reference_points.dim() == 4:                         # (B, Q, L, 2): one point per level
            ref = reference_points[:, :, None, :, None, :]
        else:
            raise ValueError(f"reference_points: expected (B, Q, 2) or (B, Q, L, 2), got {tuple(reference_points.shape)}")
        locations = ref + offsets / size_xy[None, None, None, :, None, :]
        return locations, weights

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, value: torch.Tensor,
                spatial_shapes: Shapes, query_pos: torch.Tensor | None = None,
                value_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """query (B, Q, C), reference_points (B, Q, 2) or (B, Q, L, 2) in [0, 1] (x, y), value (B, N, C) the
        level-major flattened memory with ``spatial_shapes`` [(H_l, W_l)], optional padding mask (B, N) True
        for padded tokens  ->  (B, Q, C)."""
        B, Q, C = query.shape
        N = value.shape[1]
        q = query if query_pos is None else query + query_pos
        locations, weights = self.sampling_locations(q, reference_points, spatial_shapes)
        if value_padding_mask is not None:
            value = value.masked_fill(value_padding_mask[..., None], 0.0)
        M, D = self.num_heads, self.head_dim
        if self.mode == "msda":
            v = self.value_proj(value).view(B, N, M, D)
            out = deformable_sample(v, spatial_shapes, locations, weights, self.sampler, False).reshape(B, Q, C)
        else:
            sampled = deformable_sample(value.view(B, N, 1, C), spatial_shapes, locations, weights, self.sampler, True)
            out = torch.einsum("bqmc,mcd->bqmd", sampled, self.value_proj_weight) + self.value_proj_bias
            out = out.reshape(B, Q, C)                                               # (B, Q, M*D)
        return self.output_proj(out)

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, num_levels={self.num_levels}, "
                f"num_points={self.num_points}, mode={self.mode!r}, sampler={self.sampler!r}")
