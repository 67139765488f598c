"""Weight initialisation shared by heatmap-style heads.

HRNet / SimpleBaseline heads (and the DEKR and TFPose heads built on them) start every (transposed) convolution at
N(0, 0.001^2) with zero bias and every BatchNorm at weight 1, bias 0, so the initial heatmaps are near zero
everywhere. Official code: ``init_weights`` of HRNet/DEKR ``lib/models/hrnet_dekr.py`` and mmpose's
``TopdownHeatmapSimpleHead``.
"""
from __future__ import annotations

from torch import nn

__all__ = ["heatmap_head_init_"]


def heatmap_head_init_(module: nn.Module, std: float = 0.001) -> None:
    """In place: every Conv2d / ConvTranspose2d in ``module`` to N(0, std^2) with zero bias, every BatchNorm2d
    to (1, 0)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
