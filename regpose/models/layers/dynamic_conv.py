"""Sparse R-CNN's dynamic instance interaction ("DynamicConv", Sun et al. CVPR 2021, Sec. 3.4).

Each query generates the weights of a two-layer per-instance MLP that mixes the channels of its own RoI
tokens; the result is flattened over tokens and projected back to one vector. QueryPose's box decoder uses
it on 7x7 RoIs (49 tokens) and its non-light keypoint decoder on 14x14 RoIs (196 tokens); the paper calls it
DyMLP_channel (QueryPose Eq. 1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DynamicConv", "fast_linear", "eager_cpu_inference"]


def eager_cpu_inference(x: torch.Tensor) -> bool:
    """True when ``x`` flows through plain eager CPU inference: no autograd, no tracing / ONNX export, no
    active dispatch mode (FLOP counters, fake tensors). Only then may a module swap in an equivalent faster
    execution path (fused / Winograd / oneDNN kernels, worker threads); everything else sees the plain ops."""
    if x.device.type != "cpu" or torch.is_grad_enabled() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return False
    try:
        from torch.utils._python_dispatch import _get_current_dispatch_mode_stack
        return not _get_current_dispatch_mode_stack()
    except ImportError:  # pragma: no cover - older torch
        return True


def fast_linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """``layer(x)``; in eager CPU inference through oneDNN's matmul, which on CPUs where MKL's sgemm takes a
    slow path (e.g. AMD) is about twice as fast for these large, skinny layers. Same result up to rounding."""
    if (x.dtype == torch.float32 and x.dim() == 2 and eager_cpu_inference(x)
            and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), layer.weight, layer.bias, "none", [], "")
    return layer(x)


class DynamicConv(nn.Module):
    """query (n, d) + tokens (n, T, d) -> (n, d).

    ``dynamic_layer`` (d -> 2*d*dd) makes W1 (d x dd, the first d*dd outputs, row-major) and W2 (dd x d, the
    rest); tokens @ W1 -> LN -> ReLU -> @ W2 -> LN -> ReLU -> flatten (T*d, token-major) -> ``out_layer``
    -> LN -> ReLU. Parameter names match the official Sparse R-CNN / QueryPose modules.
    """

    def __init__(self, dim: int, dim_dynamic: int, num_tokens: int):
        super().__init__()
        self.dim = dim
        self.dim_dynamic = dim_dynamic
        self.num_tokens = num_tokens
        self.num_params = dim * dim_dynamic
        self.dynamic_layer = nn.Linear(dim, 2 * self.num_params)
        self.norm1 = nn.LayerNorm(dim_dynamic)
        self.norm2 = nn.LayerNorm(dim)
        self.out_layer = nn.Linear(dim * num_tokens, dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, query: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        n = query.shape[0]
        params = fast_linear(query, self.dynamic_layer)                           # (n, 2*d*dd)
        w1 = params[:, : self.num_params].reshape(n, self.dim, self.dim_dynamic)  # (n, d, dd)
        w2 = params[:, self.num_params:].reshape(n, self.dim_dynamic, self.dim)   # (n, dd, d)
        x = F.relu(self.norm1(torch.bmm(tokens, w1)))                             # (n, T, dd)
        x = F.relu(self.norm2(torch.bmm(x, w2)))                                  # (n, T, d)
        return F.relu(self.norm3(fast_linear(x.flatten(1), self.out_layer)))     # (n, d)
