"""The heatmap-head initialisation (HRNet / DEKR / SimpleBaseline official init)."""
from __future__ import annotations

import torch
from torch import nn

from regpose.models.layers.init import heatmap_head_init_


def test_convs_start_at_a_thousandth_and_batchnorm_at_identity():
    torch.manual_seed(0)
    head = nn.Sequential(nn.ConvTranspose2d(8, 64, 4, 2, 1), nn.BatchNorm2d(64), nn.Conv2d(64, 64, 3, padding=1),
                         nn.Conv2d(64, 64, 1, bias=False))
    for bn in head.modules():
        if isinstance(bn, nn.BatchNorm2d):
            nn.init.uniform_(bn.weight)
            nn.init.uniform_(bn.bias)
    heatmap_head_init_(head)
    for m in (head[0], head[2], head[3]):
        assert abs(float(m.weight.std()) - 0.001) < 1e-4 and abs(float(m.weight.mean())) < 1e-4
        assert m.bias is None or not m.bias.any()
    assert torch.equal(head[1].weight, torch.ones(64)) and not head[1].bias.any()
