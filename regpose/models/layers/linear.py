"""Small layers shared by the regression heads: RLE's normalised linear and the logit-space inverse sigmoid."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["NormalizedLinear", "inverse_sigmoid"]


class NormalizedLinear(nn.Linear):
    """RLE's normalised linear ``Linear(norm=True)``: y = (x W^T) / ||x||_2 + b. The bias is added after the
    normalisation (official RLE / Poseur ``fc_coord``, QueryPose's per-part coordinate heads), so the feature's
    scale does not change the coordinates. No epsilon, as official. Parameters ``weight`` / ``bias`` as nn.Linear."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.matmul(self.weight.t()) / torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        return y + self.bias if self.bias is not None else y


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """log(x / (1 - x)) with x clipped to [0, 1] and both terms floored at ``eps`` (Deformable DETR): maps
    normalised reference points to the logit space in which the decoders add their refinements."""
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))
