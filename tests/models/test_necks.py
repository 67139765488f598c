"""Necks: HRFPN / HRFPN_v1 equal the official modules (necks_hrnet reference), FPN follows detectron2."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from regpose.compat.querypose import convert_neck_state_dict
from regpose.models.necks import FPN, HRFPN, HRFPNv1
from conftest import REFERENCE

NECKS = REFERENCE / "querypose" / "necks_hrnet" / "necks.npz"


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("prefix,cls", [("hrfpn", HRFPN), ("hrfpn_v1", HRFPNv1)])
def test_hrnet_necks_equal_official(prefix, cls):
    z = np.load(NECKS)
    branches = [torch.from_numpy(z[f"input.branch{i}"]) for i in range(4)]
    official = {k[len(prefix) + 1:]: torch.from_numpy(z[k]) for k in z.files
                if k.startswith(prefix + ".") and ".out." not in k}
    state, dropped = convert_neck_state_dict(official, keep_unused=True)
    neck = cls([b.shape[1] for b in branches], 8, keep_unused=True).eval()
    neck.load_state_dict(state)                       # strict: every official key has a home
    assert dropped == []
    with torch.no_grad():
        outs = neck(branches)
    assert len(outs) == 4
    for lvl, out in zip((2, 3, 4, 5), outs):
        ref = torch.from_numpy(z[f"{prefix}.out.p{lvl}"])
        assert out.shape == ref.shape
        torch.testing.assert_close(out, ref, atol=2e-5, rtol=0)


def test_hrnet_necks_without_unused_parameters():
    z = np.load(NECKS)
    official = {k[len("hrfpn_v1."):]: torch.from_numpy(z[k]) for k in z.files
                if k.startswith("hrfpn_v1.") and ".out." not in k}
    state, dropped = convert_neck_state_dict(official, keep_unused=False)
    assert sorted(dropped) == ["fpn_conv.4.weight", "lateral_conv.0.weight"]
    neck = HRFPNv1([4, 8, 16, 32], 8, keep_unused=False)
    neck.load_state_dict(state)
    # the unused official convs are exactly what keep_unused adds
    full = HRFPNv1([4, 8, 16, 32], 8, keep_unused=True)
    extra = sum(p.numel() for p in full.parameters()) - sum(p.numel() for p in neck.parameters())
    assert extra == 8 * 4 + 8 * 8 * 9


def test_hrfpn_v1_has_no_bias_on_laterals_and_outputs():
    neck = HRFPNv1([48, 96, 192, 384], 256)
    assert neck.reduction.bias is not None
    assert all(c.bias is None for c in list(neck.lateral_convs) + list(neck.output_convs))


def test_fpn_top_down_path_and_top_blocks():
    torch.manual_seed(0)
    c = [torch.randn(1, ch, 32 // 2 ** i, 48 // 2 ** i) for i, ch in enumerate((8, 16, 32, 64))]
    fpn = FPN([8, 16, 32, 64], 12, top_block="maxpool").eval()
    with torch.no_grad():
        outs = fpn(c)
        # detectron2 semantics written out: laterals, nearest x2 top-down sums, 3x3 outputs, P6 = maxpool(k1, s2)
        lat = [conv(x) for conv, x in zip(fpn.lateral_convs, c)]
        merged = [lat[3]]
        for i in (2, 1, 0):
            merged.insert(0, lat[i] + F.interpolate(merged[0], scale_factor=2.0, mode="nearest"))
        ref = [conv(m) for conv, m in zip(fpn.output_convs, merged)]
    assert len(outs) == 5
    for a, b in zip(outs[:4], ref):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(outs[4], ref[3][:, :, ::2, ::2])
    p6p7 = FPN([8, 16, 32, 64], 12, top_block="p6p7", top_block_in="c5")
    shapes = [tuple(o.shape[-2:]) for o in p6p7(c)]
    assert shapes == [(32, 48), (16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]
    assert p6p7.top_block.p6.in_channels == 64 and p6p7.num_levels == 6
