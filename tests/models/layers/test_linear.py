"""models/layers/linear.py: RLE's normalised linear (bias after the normalisation, scale invariant) and the
logit-space inverse sigmoid (the inverse of sigmoid inside (0, 1), finite at and beyond the ends)."""
from __future__ import annotations

import math

import torch

from regpose.models.layers.linear import NormalizedLinear, inverse_sigmoid


def test_normalized_linear_divides_by_the_feature_norm_before_the_bias():
    layer = NormalizedLinear(3, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 1.0]]))
        layer.bias.copy_(torch.tensor([0.5, -0.5]))
    x = torch.tensor([[3.0, 0.0, 4.0]])                                    # |x| = 5
    expected = torch.tensor([[(3 + 12) / 5 + 0.5, 4 / 5 - 0.5]])
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer(7 * x), expected)                     # the feature's scale does not matter
    torch.testing.assert_close(layer(torch.stack([x, 2 * x])), expected.expand(2, 1, 2))   # any leading shape
    no_bias = NormalizedLinear(3, 2, bias=False)
    no_bias.weight.data.copy_(layer.weight)
    torch.testing.assert_close(no_bias(x), expected - layer.bias)
    assert dict(layer.named_parameters()).keys() == {"weight", "bias"}    # nn.Linear's names (checkpoints load)


def test_normalized_linear_gradients():
    layer = NormalizedLinear(4, 3)
    x = torch.randn(5, 4, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad.abs().sum() > 0 and layer.weight.grad.abs().sum() > 0
    torch.testing.assert_close(layer.bias.grad, torch.full((3,), 5.0))


def test_inverse_sigmoid_inverts_sigmoid_and_stays_finite_at_the_ends():
    z = torch.linspace(-6, 6, 25)
    torch.testing.assert_close(inverse_sigmoid(torch.sigmoid(z)), z, rtol=1e-4, atol=1e-4)
    ends = inverse_sigmoid(torch.tensor([-0.5, 0.0, 1.0, 1.5]))
    torch.testing.assert_close(ends, torch.tensor([math.log(1e-5), math.log(1e-5), -math.log(1e-5),
                                                   -math.log(1e-5)]))
    torch.testing.assert_close(inverse_sigmoid(torch.tensor([0.0, 1.0]), eps=1e-3),
                               torch.tensor([math.log(1e-3), -math.log(1e-3)]))
