"""DEKR's adaptive convolution: the grid_sample formulation equals the official deform_conv2d one (values and
gradients), groups are independent branches, and the official zero init collapses the taps onto the pixel."""
import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import deform_conv2d

from regpose.models.layers.adaptive_conv import (REGULAR_GRID, AdaptiveConv2d, adaptive_conv2d,
                                                 affine_deform_offsets)


def _inputs(n=2, g=3, c=4, h=9, w=11, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, g * c, h, w, generator=gen, dtype=dtype)
    eye = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=dtype).view(1, 4, 1, 1).repeat(1, g, 1, 1)
    affine = eye + 0.6 * torch.randn(n, 4 * g, h, w, generator=gen, dtype=dtype)
    translation = 1.7 * torch.randn(n, 2 * g, h, w, generator=gen, dtype=dtype)   # reaches outside the map
    weight = torch.randn(g * c, c, 3, 3, generator=gen, dtype=dtype) / 6
    return x, affine, translation, weight, g


def test_offsets_follow_the_official_formula():
    x, affine, translation, weight, g = _inputs(n=1, g=2)
    off = affine_deform_offsets(affine, translation, g).view(1, g, 9, 2, 9, 11)
    m = affine.view(1, g, 4, 9, 11)
    t = translation.view(1, g, 2, 9, 11)
    for k in range(9):
        dy, dx = k // 3 - 1, k % 3 - 1
        assert (REGULAR_GRID[0, k], REGULAR_GRID[1, k]) == (dy, dx)
        want_y = m[:, :, 0] * dy + m[:, :, 1] * dx - dy + t[:, :, 0]
        want_x = m[:, :, 2] * dy + m[:, :, 3] * dx - dx + t[:, :, 1]
        torch.testing.assert_close(off[:, :, k, 0], want_y)
        torch.testing.assert_close(off[:, :, k, 1], want_x)


def test_grid_sample_equals_deform_conv2d_float64():
    args = _inputs()
    a = adaptive_conv2d(*args, impl="grid_sample")
    b = adaptive_conv2d(*args, impl="deform_conv2d")
    assert (a - b).abs().max().item() < 1e-10


def test_grid_sample_equals_deform_conv2d_float32_dekr_sized():
    x, affine, translation, weight, g = _inputs(n=1, g=17, c=15, h=32, w=40, dtype=torch.float32, seed=1)
    a = adaptive_conv2d(x, affine, translation, weight, g, impl="grid_sample")
    b = adaptive_conv2d(x, affine, translation, weight, g, impl="deform_conv2d")
    assert (a - b).abs().max().item() <= 1e-4


def test_gradients_equal_deform_conv2d():
    grads = []
    for impl in ("grid_sample", "deform_conv2d"):
        args = [t.clone().requires_grad_(True) if torch.is_tensor(t) else t for t in _inputs(h=7, w=8)]
        out = adaptive_conv2d(*args, impl=impl)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        grads.append([t.grad for t in args[:4]])
    for ga, gb in zip(*grads):
        assert (ga - gb).abs().max().item() < 1e-9


def test_groups_are_independent_branches():
    """The grouped call equals G separate single-group adaptive convs (the official per-keypoint branches)."""
    x, affine, translation, weight, g = _inputs(g=3, c=4)
    out = adaptive_conv2d(x, affine, translation, weight, g, impl="grid_sample")
    for j in range(g):
        single = adaptive_conv2d(x[:, 4 * j:4 * j + 4], affine[:, 4 * j:4 * j + 4], translation[:, 2 * j:2 * j + 2],
                                 weight[4 * j:4 * j + 4], 1, impl="deform_conv2d")
        torch.testing.assert_close(out[:, 4 * j:4 * j + 4], single)


def test_identity_transform_is_a_plain_conv():
    """M = I, t = 0 samples the regular grid: the adaptive conv is an ordinary 3x3 grouped convolution."""
    x, _, _, weight, g = _inputs()
    n, _, h, w = x.shape
    affine = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=x.dtype).view(1, 4, 1, 1).repeat(n, g, h, w)
    translation = torch.zeros(n, 2 * g, h, w, dtype=x.dtype)
    out = adaptive_conv2d(x, affine, translation, weight, g, impl="grid_sample")
    torch.testing.assert_close(out, F.conv2d(x, weight, padding=1, groups=g))


def test_official_init_collapses_taps_onto_the_pixel():
    layer = AdaptiveConv2d(channels=4, groups=2, impl="grid_sample").double()
    x = torch.randn(1, 8, 6, 7, dtype=torch.float64)
    out = layer(x)
    summed = layer.weight.sum(dim=(2, 3), keepdim=True)            # all nine taps read the pixel itself
    torch.testing.assert_close(out, F.conv2d(x, summed, groups=2))
    assert layer.transform_matrix_conv.weight.abs().sum() == 0 and layer.translation_conv.bias.abs().sum() == 0


@pytest.mark.parametrize("impl", ["grid_sample", "deform_conv2d"])
def test_module_gradients_reach_every_parameter(impl):
    layer = AdaptiveConv2d(channels=3, groups=2, impl=impl)
    for conv in (layer.transform_matrix_conv, layer.translation_conv):
        torch.nn.init.normal_(conv.weight, std=0.1)
    x = torch.randn(2, 6, 8, 8, requires_grad=True)
    (layer(x) ** 2).sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_deform_conv2d_switch_is_the_official_call():
    x, affine, translation, weight, g = _inputs(dtype=torch.float32)
    off = affine_deform_offsets(affine, translation, g)
    want = deform_conv2d(x, off, weight, padding=1)
    torch.testing.assert_close(adaptive_conv2d(x, affine, translation, weight, g, impl="deform_conv2d"), want)
