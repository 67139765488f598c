"""Sine-cosine position encodings (models/layers/position.py): values by hand, the channel layout (sin on even,
cos on odd channels; y first in the grid, x first for points), and the grid equals the point encoding of its
normalised pixel positions."""
from __future__ import annotations

import math

import torch

from regpose.models.layers.position import sine_grid_encoding, sine_point_encoding


def test_point_encoding_by_hand():
    """num_feats 4, temperature 100: divisors 1, 1, 10, 10; channels sin, cos, sin, cos; x half first."""
    x, y = 0.3, 0.8
    enc = sine_point_encoding(torch.tensor([x, y]), num_feats=4, temperature=100.0, scale=2.0)
    ax, ay = 2 * x, 2 * y
    expected = [math.sin(ax), math.cos(ax), math.sin(ax / 10), math.cos(ax / 10),
                math.sin(ay), math.cos(ay), math.sin(ay / 10), math.cos(ay / 10)]
    torch.testing.assert_close(enc, torch.tensor(expected))


def test_grid_encoding_by_hand_and_its_offset():
    """Row i (1-based) of an H-row map encodes (i + offset) / (H + eps) * scale; y channels come first."""
    h, w, f = 3, 5, 4
    for offset in (0.0, -0.5):
        enc = sine_grid_encoding(h, w, num_feats=f, temperature=100.0, offset=offset)
        assert enc.shape == (2 * f, h, w)
        i, j = 2, 4                                              # 0-based row 2, column 4
        ay = (i + 1 + offset) / (h + 1e-6) * 2 * math.pi
        ax = (j + 1 + offset) / (w + 1e-6) * 2 * math.pi
        expected = [math.sin(ay), math.cos(ay), math.sin(ay / 10), math.cos(ay / 10),
                    math.sin(ax), math.cos(ax), math.sin(ax / 10), math.cos(ax / 10)]
        torch.testing.assert_close(enc[:, i, j], torch.tensor(expected))
        assert torch.equal(enc[:f, :, 0], enc[:f, :, w - 1])          # y channels constant along a row
        assert torch.equal(enc[f:, 0, :], enc[f:, h - 1, :])          # x channels constant along a column


def test_grid_equals_point_encoding_of_pixel_positions_with_halves_swapped():
    """Both flavours share one frequency rule: the grid is the point encoding of the normalised (x, y) of each
    pixel (DETR's default, 128 channels per axis), with the y half first."""
    h, w, f = 6, 4, 128
    grid = sine_grid_encoding(h, w, num_feats=f, normalize=True, scale=1.0, eps=0.0)
    ys = torch.arange(1, h + 1, dtype=torch.float32) / h
    xs = torch.arange(1, w + 1, dtype=torch.float32) / w
    points = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1)         # (h, w, 2) as (x, y)
    enc = sine_point_encoding(points, num_feats=f, scale=1.0)               # (h, w, 2f), x first
    torch.testing.assert_close(grid.permute(1, 2, 0), torch.cat([enc[..., f:], enc[..., :f]], -1))


def test_unnormalised_grid_uses_integer_positions_and_gradients_flow_through_points():
    enc = sine_grid_encoding(2, 3, num_feats=2, temperature=10.0, normalize=False)
    torch.testing.assert_close(enc[:, 1, 2], torch.tensor([math.sin(2.0), math.cos(2.0), math.sin(3.0),
                                                           math.cos(3.0)]))
    points = torch.rand(5, 2, requires_grad=True)
    sine_point_encoding(points, num_feats=8).sum().backward()
    assert points.grad.shape == (5, 2) and bool(points.grad.abs().gt(0).all())
