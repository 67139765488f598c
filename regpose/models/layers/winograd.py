"""Winograd F(4x4, 3x3) convolution: a stack of 3x3 convs (stride 1, padding 1) + ReLU with ~3x fewer multiplies.

What: Lavin & Gray 2016 with interpolation points 0, +-1, +-2, inf: ``Y = A^T [(G g G^T) . (B^T d B)] A`` per
6x6 input tile ``d`` (stride 4) and 3x3 kernel ``g``, giving a 4x4 output tile; exact up to fp32 rounding.
Why: 91% of QueryPose's FLOPs are the keypoint decoder's 3x3 convs on 14x14 RoIs; Winograd replaces 9 multiplies
per output by 36/16 = 2.25 (2.94 with the 16x16 tiling of 14x14). Eager CPU inference only (no autograd): training,
CUDA, tracing and ONNX export keep ``conv2d``.

On CPU the 36 per-tap channel GEMMs go through oneDNN's private ``torch.ops.mkldnn`` linear ops with weights
pre-packed once (MKL's sgemm reaches about half the speed on some CPUs); builds without them, and other devices,
use one batched matmul.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["winograd_weight", "winograd_conv3x3", "WinogradConv3x3", "winograd_conv_relu_tower"]

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
    """Whether this torch build has oneDNN and its private pre-packed linear ops."""
    try:
        return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        return False


class WinogradConv3x3:
    """Inference-time state of one 3x3 conv for :func:`winograd_conv_relu_tower`: the 36 transformed tap
    matrices (out x in) and the bias. On CPU the 36 channel GEMMs go through oneDNN with weights pre-packed
    once; elsewhere a batched matmul."""

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
