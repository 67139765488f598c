"""Feature pyramids on top of backbone feature lists: detectron2's FPN and the two HRNet necks QueryPose uses.

Every neck takes the backbone's list of maps (finest first) and returns a list of pyramid levels (finest
first, P2 at stride 4 when the input list starts at stride 4). Official module names differ from ours;
``regpose/compat/*`` maps them.
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FPN", "LastLevelMaxPool", "LastLevelP6P7", "HRFPN", "HRFPNv1", "c2_xavier_fill"]


def c2_xavier_fill(module: nn.Module) -> None:
    """Caffe2's "XavierFill" as detectron2 uses it: kaiming-uniform with a=1, bias 0."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if getattr(module, "bias", None) is not None:
        nn.init.constant_(module.bias, 0)


class LastLevelMaxPool(nn.Module):
    """detectron2's P6 = max-pool(kernel 1, stride 2) of P5 (Sparse R-CNN / QueryPose build it, never use it)."""

    num_levels = 1

    def forward(self, p5: torch.Tensor, c5: torch.Tensor) -> list[torch.Tensor]:
        return [F.max_pool2d(p5, kernel_size=1, stride=2, padding=0)]


class LastLevelP6P7(nn.Module):
    """RetinaNet / FCOS top block: P6 = conv3x3/2(in), P7 = conv3x3/2(ReLU(P6)); ``in`` is C5 or P5."""

    num_levels = 2

    def __init__(self, in_channels: int, out_channels: int, in_feature: Literal["p5", "c5"] = "p5"):
        super().__init__()
        self.in_feature = in_feature
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)
        for m in (self.p6, self.p7):
            c2_xavier_fill(m)

    def forward(self, p5: torch.Tensor, c5: torch.Tensor) -> list[torch.Tensor]:
        x = p5 if self.in_feature == "p5" else c5
        p6 = self.p6(x)
        return [p6, self.p7(F.relu(p6))]


class FPN(nn.Module):
    """Feature Pyramid Network as in detectron2 (Lin et al. 2017): 1x1 laterals, nearest x2 top-down sum,
    3x3 output convs, no norm / activation, c2-Xavier init.

    in_channels: channels of the backbone maps (finest first, consecutive strides x2).
    top_block:   None, "maxpool" (P6 by stride-2 max-pool of P5, detectron2 ``LastLevelMaxPool``) or
                 "p6p7" (``LastLevelP6P7`` on P5 or C5, as FCOS / DirectPose use).
    Output: [P_first, ..., P_last, (P6, P7)] each with ``out_channels``.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256, bias: bool = True,
                 top_block: Literal[None, "maxpool", "p6p7"] = None,
                 top_block_in: Literal["p5", "c5"] = "p5", fuse_type: Literal["sum", "avg"] = "sum"):
        super().__init__()
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.fuse_type = fuse_type
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1, bias=bias) for c in in_channels)
        self.output_convs = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=bias)
                                          for _ in in_channels)
        for m in list(self.lateral_convs) + list(self.output_convs):
            c2_xavier_fill(m)
        if top_block is None:
            self.top_block = None
        elif top_block == "maxpool":
            self.top_block = LastLevelMaxPool()
        elif top_block == "p6p7":
            c = out_channels if top_block_in == "p5" else self.in_channels[-1]
            self.top_block = LastLevelP6P7(c, out_channels, top_block_in)
        else:
            raise ValueError(f"FPN top_block: expected None, 'maxpool' or 'p6p7', got {top_block!r}")

    @property
    def num_levels(self) -> int:
        return len(self.in_channels) + (self.top_block.num_levels if self.top_block is not None else 0)

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        feats = list(feats)[-len(self.lateral_convs):]
        prev = self.lateral_convs[-1](feats[-1])
        outs = [self.output_convs[-1](prev)]
        for i in range(len(feats) - 2, -1, -1):
            top_down = F.interpolate(prev, scale_factor=2.0, mode="nearest")
            prev = self.lateral_convs[i](feats[i]) + top_down
            if self.fuse_type == "avg":
                prev = prev / 2
            outs.insert(0, self.output_convs[i](prev))
        if self.top_block is not None:
            outs.extend(self.top_block(outs[-1], feats[-1]))
        return outs


class HRFPN(nn.Module):
    """HRNet neck of QueryPose's HRNet-W32 config (official ``HRFPN``, spec 1b).

    Upsample every branch bilinearly to stride 4, concatenate, reduce to ``out_channels`` with a 1x1 conv,
    average-pool by 2^i (i = 0..num_levels-1) and apply one 3x3 conv per level. No norm, no activation,
    PyTorch default init (the official module has none of its own).
    keep_unused: also build the official 5th 3x3 conv (``fpn_conv.4``), which the official forward never
    uses, so parameter counts and state dicts equal the released ones.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256, num_levels: int = 4,
                 keep_unused: bool = False):
        super().__init__()
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.num_levels = num_levels
        self.reduction = nn.Conv2d(sum(in_channels), out_channels, 1)
        self.output_convs = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1)
                                          for _ in range(num_levels))
        # Official code: fpn_conv.4 exists (num_outs=5) but only four levels are returned.
        self.unused_output_conv = nn.Conv2d(out_channels, out_channels, 3, padding=1) if keep_unused else None

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        ups = [feats[0]] + [F.interpolate(f, scale_factor=2 ** i, mode="bilinear", align_corners=False)
                            for i, f in enumerate(feats) if i > 0]
        r = self.reduction(torch.cat(ups, dim=1))
        levels = [r] + [F.avg_pool2d(r, kernel_size=2 ** i, stride=2 ** i) for i in range(1, self.num_levels)]
        return [conv(x) for conv, x in zip(self.output_convs, levels)]


class HRFPNv1(nn.Module):
    """HRNet neck of QueryPose's HRNet-W48 config (official ``HRFPN_v1``, spec 1c).

    R = 1x1 reduction of the stride-4 concatenation of all branches (as :class:`HRFPN`); P2 = conv3x3(R);
    then for each coarser branch i: R <- avgpool2x2(R) + lateral1x1_i(branch_i), P_{i+2} = conv3x3_i(R).
    Official code: laterals and output convs have no bias (the bias flag is tied to ``norm is None`` but the
    config passes ``""``) and use c2-Xavier init; the reduction conv has a bias.
    keep_unused: also build the official ``lateral_conv.0`` (never used) and ``fpn_conv.4`` (its output,
    a fifth level, is computed and discarded by the official code; we do not compute it).
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256, keep_unused: bool = False):
        super().__init__()
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.num_levels = len(in_channels)
        self.reduction = nn.Conv2d(sum(in_channels), out_channels, 1)
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1, bias=False) for c in in_channels[1:])
        self.output_convs = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
                                          for _ in in_channels)
        for m in list(self.lateral_convs) + list(self.output_convs):
            c2_xavier_fill(m)
        if keep_unused:
            self.unused_lateral_conv = nn.Conv2d(in_channels[0], out_channels, 1, bias=False)
            self.unused_output_conv = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
            c2_xavier_fill(self.unused_lateral_conv)
            c2_xavier_fill(self.unused_output_conv)
        else:
            self.unused_lateral_conv = self.unused_output_conv = None

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        ups = [feats[0]] + [F.interpolate(f, scale_factor=2 ** i, mode="bilinear", align_corners=False)
                            for i, f in enumerate(feats) if i > 0]
        r = self.reduction(torch.cat(ups, dim=1))
        outs = [self.output_convs[0](r)]
        for i in range(1, len(feats)):
            r = F.avg_pool2d(r, kernel_size=2, stride=2) + self.lateral_convs[i - 1](feats[i])
            outs.append(self.output_convs[i](r))
        return outs

