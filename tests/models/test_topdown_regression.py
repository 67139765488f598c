"""The top-down regression pieces Poseur and RLE share: RLE's normalised linear, the coarse head, the flip test of
(mu, sigma) outputs and its fusion modes by hand (the crop -> image decoding: tests/codecs/)."""
from __future__ import annotations

import math

import numpy as np
import torch

from regpose.models.topdown_regression import (CoarseRLEHead, NormLinear, flip_back, fuse_flip, keypoint_scores,
                                               uncertainty_score)


def test_norm_linear_divides_by_the_feature_norm_before_the_bias():
    layer = NormLinear(3, 2)
    x = torch.tensor([[3.0, 0.0, 4.0]])
    expected = x @ layer.linear.weight.t() / 5.0 + layer.linear.bias
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer(10 * x), expected)   # scale invariant


def test_coarse_head_shapes_and_sigma_range():
    head = CoarseRLEHead(16, 5)
    mu, sigma = head(torch.randn(3, 16, 4, 3))
    assert mu.shape == sigma.shape == (3, 5, 2)
    assert ((sigma > 0) & (sigma < 1)).all()


def test_flip_back_twice_is_identity_and_swaps_pairs():
    pairs = torch.tensor([[1, 2], [3, 4]])
    mu, sigma = torch.rand(2, 5, 2), torch.rand(2, 5, 2)
    m1, s1 = flip_back(mu, sigma, pairs)
    assert torch.allclose(m1[:, 1, 0], 1 - mu[:, 2, 0]) and torch.equal(s1[:, 3], sigma[:, 4])
    m2, s2 = flip_back(m1, s1, pairs)
    torch.testing.assert_close(m2, mu)
    torch.testing.assert_close(s2, sigma)


def test_fusion_modes_hand_computed():
    mu1, mu2 = torch.tensor([[[0.2, 0.4]]]), torch.tensor([[[0.4, 0.8]]])
    s1, s2 = torch.tensor([[[0.1, 0.3]]]), torch.tensor([[[0.5, 0.5]]])
    k1, k2 = 1 - 0.2, 1 - 0.5                              # mean(1 - sigma)
    mu, score = fuse_flip(mu1, s1, mu2, s2, "default")
    torch.testing.assert_close(mu, (mu1 + mu2) / 2)
    assert abs(float(score) - (k1 + k2) / 2) < 1e-6
    mu, score = fuse_flip(mu1, s1, mu2, s2, "type1")
    torch.testing.assert_close(mu, (mu1 * k1 + mu2 * k2) / (k1 + k2))
    assert abs(float(score) - (k1 * k2 * (1 - abs(k1 - k2))) ** 2) < 1e-6
    p = [0.7 * (1 - math.exp(-0.2 / 0.1)) * (1 - math.exp(-0.2 / 0.3)), 0.7 * (1 - math.exp(-0.2 / 0.5)) ** 2]
    mu, score = fuse_flip(mu1, s1, mu2, s2, "type2")
    w1, w2 = p[0] ** 5, p[1] ** 5
    torch.testing.assert_close(mu, (mu1 * w1 + mu2 * w2) / (w1 + w2), rtol=1e-6, atol=1e-7)
    assert abs(float(score) - sum(p) / 2) < 1e-6
    assert abs(float(uncertainty_score(s1)) - p[0]) < 1e-6
    _, none = fuse_flip(mu1, s1, mu2, s2, "type2", kind="none")
    assert float(none) == 1.0
    assert float(keypoint_scores(s1, "none")) == 1.0
