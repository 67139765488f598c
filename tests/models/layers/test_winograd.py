"""Winograd F(4x4, 3x3) convolutions (regpose.models.layers.winograd): the reference transform and the cached
inference tower equal conv2d (+ ReLU) for any map size, in cache-sized chunks and on the portable matmul path."""
import pytest
import torch

from regpose.models.layers.winograd import (WinogradConv3x3, winograd_conv3x3, winograd_conv_relu_tower,
                                            winograd_weight)

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("shape", [(3, 8, 14, 14), (2, 5, 7, 9), (1, 4, 4, 4), (2, 6, 1, 3)])
def test_winograd_conv_equals_conv2d(shape):
    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(*shape, generator=gen)
    convs = [torch.nn.Conv2d(shape[1], 7, 3, padding=1), torch.nn.Conv2d(7, 5, 3, padding=1)]
    with torch.no_grad():
        ref = convs[0](x)
        got = winograd_conv3x3(x, winograd_weight(convs[0].weight), convs[0].bias)
        torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-5)
        for c in convs[1:]:
            ref = torch.relu(c(torch.relu(ref)))
        tower = winograd_conv_relu_tower(x, [WinogradConv3x3(c.weight, c.bias) for c in convs])
    torch.testing.assert_close(tower, ref, atol=2e-5, rtol=1e-5)
    layers = [WinogradConv3x3(c.weight, c.bias) for c in convs]
    with torch.no_grad():                   # RoIs in cache-sized chunks give the same result
        torch.testing.assert_close(winograd_conv_relu_tower(x, layers, chunk=1), ref, atol=2e-5, rtol=1e-5)
    for layer, c in zip(layers, convs):     # the portable batched-matmul path (non-CPU devices)
        layer.packed = None
        layer.weight36 = winograd_weight(c.weight.detach()).transpose(1, 2).contiguous()
    with torch.no_grad():
        torch.testing.assert_close(winograd_conv_relu_tower(x, layers), ref, atol=2e-5, rtol=1e-5)

