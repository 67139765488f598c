"""Sine-cosine position encodings (Vaswani et al. 2017, as used by DETR / Deformable DETR).

Two flavours share one frequency rule: for channel j of an axis with ``num_feats`` channels the angle is
``value / temperature ** (2 * (j // 2) / num_feats)``; even channels take ``sin``, odd channels ``cos``
(interleaved, as mmcv / DETR lay them out).

* :func:`sine_grid_encoding` - a dense map for an H x W feature level (DETR's ``PositionEmbeddingSine`` /
  mmcv's ``SinePositionalEncoding``); the y half comes first.
* :func:`sine_point_encoding` - the encoding of arbitrary (x, y) points (Deformable DETR's two-stage
  ``get_proposal_pos_embed``, Poseur's keypoint encoder); the x half comes first.
"""
from __future__ import annotations

import math

import torch

__all__ = ["sine_grid_encoding", "sine_point_encoding"]


def _frequencies(num_feats: int, temperature: float, device, dtype=torch.float32) -> torch.Tensor:
    """(num_feats,) divisors temperature ** (2 * floor(j / 2) / num_feats)."""
    j = torch.arange(num_feats, device=device, dtype=dtype)
    return temperature ** (2 * torch.div(j, 2, rounding_mode="floor") / num_feats)


def _interleave(angles: torch.Tensor) -> torch.Tensor:
    """(..., F) angles -> (..., F) with sin on even and cos on odd channels."""
    return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)


def sine_grid_encoding(height: int, width: int, num_feats: int = 128, temperature: float = 10000.0,
                       normalize: bool = True, scale: float = 2 * math.pi, offset: float = 0.0, eps: float = 1e-6,
                       device=None, dtype=torch.float32) -> torch.Tensor:
    """2-D encoding of an unpadded ``height x width`` map -> (2 * num_feats, height, width), y channels first.

    With ``normalize`` the 1-based cumulative index i is mapped to ``(i + offset) / (size + eps) * scale``
    (mmcv's ``SinePositionalEncoding``; Poseur uses ``offset=-0.5``, i.e. pixel centres, DETR ``offset=0``).
    """
    y = torch.arange(1, height + 1, device=device, dtype=dtype)
    x = torch.arange(1, width + 1, device=device, dtype=dtype)
    if normalize:
        y = (y + offset) / (height + eps) * scale
        x = (x + offset) / (width + eps) * scale
    freq = _frequencies(num_feats, temperature, device, dtype)
    pos_y = _interleave(y[:, None] / freq)                   # (H, F)
    pos_x = _interleave(x[:, None] / freq)                   # (W, F)
    pos = torch.cat((pos_y[:, None, :].expand(height, width, num_feats),
                     pos_x[None, :, :].expand(height, width, num_feats)), dim=-1)   # (H, W, 2F)
    return pos.permute(2, 0, 1).contiguous()


def sine_point_encoding(points: torch.Tensor, num_feats: int = 128, temperature: float = 10000.0,
                        scale: float = 2 * math.pi) -> torch.Tensor:
    """Encode points (..., 2) given as (x, y) -> (..., 2 * num_feats), x channels first.

    Each coordinate is multiplied by ``scale`` before the frequencies are applied (Poseur: no sigmoid on the
    point, ``scale = 2 pi``; spec 2.4, paper supplementary Sec. 7).
    """
    freq = _frequencies(num_feats, temperature, points.device, points.dtype)
    angles = points[..., :, None] * scale / freq             # (..., 2, F)
    return _interleave(angles).flatten(-2)
