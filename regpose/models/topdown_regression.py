"""Top-down regression pieces shared by Poseur and the RLE baseline (and TFPose's decoding).

A top-down regression model sees one person crop and regresses K keypoints as normalised crop coordinates
u = (x_crop / W_in, y_crop / H_in), with a per-coordinate sigma when it is trained with RLE. This module holds what
such models share, so each method package keeps only its network and loss:

  * :class:`CoarseRLEHead`: GAP + FC regression with sigma (RLE's ``RegressFlow`` head = Poseur's coarse proposal,
    Poseur spec 2.3), with RLE's :class:`NormLinear` / :class:`PlainLinear` under the official parameter names;
  * keypoint scores from sigma (:func:`keypoint_scores`, Poseur Eq. 8), the flip test of (mu, sigma) outputs
    (:func:`flip_back`, :func:`fuse_flip`, Poseur spec 1.5);
  * :class:`RLETopDownInference`, the ``predict`` / ``finalize`` of (mu, sigma) models, decoding through the
    top-down regression codec (:mod:`regpose.codecs.topdown_regression`, which also makes the crops and targets:
    :func:`topdown_regression_transform` picks it for Poseur and RLE).
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ..codecs.multiscale import resolve_test_scales
from ..codecs.topdown_regression import TopDownRegressionTransform, decode_crops, topdown_transform
from ..ops import topdown_finalize
from ..structures import PoseResult
from .layers.linear import NormalizedLinear

__all__ = ["NormLinear", "PlainLinear", "CoarseRLEHead", "FlipFusion", "KeypointScore", "uncertainty_score",
           "keypoint_scores", "flip_back_coords", "flip_back", "fuse_flip", "RLETopDownInference",
           "topdown_regression_transform"]

FlipFusion = Literal["default", "type1", "type2"]
KeypointScore = Literal["rle", "uncertainty", "none"]


# ----------------------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------------------
class NormLinear(nn.Module):
    """RLE's ``Linear(norm=True)`` under the official parameter names (``.linear.weight`` / ``.linear.bias``): a
    :class:`~regpose.models.layers.linear.NormalizedLinear` with RLE's init."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.linear = NormalizedLinear(in_features, out_features, bias=bias)
        nn.init.xavier_uniform_(self.linear.weight, gain=0.01)    # RLE's Linear init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class PlainLinear(nn.Module):
    """RLE's ``Linear(norm=False)``: a plain linear layer kept inside ``.linear`` (official parameter names)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        nn.init.xavier_uniform_(self.linear.weight, gain=0.01)    # RLE's Linear init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class CoarseRLEHead(nn.Module):
    """GAP + FC regression of K keypoints with a per-coordinate sigma (RLE's ``RegressFlow`` head; Poseur's
    coarse proposal, spec 2.3). Input (B, C, H, W); output mu (B, K, 2) raw normalised coordinates (no
    activation, may leave [0, 1]) and sigma (B, K, 2) = sigmoid(.)."""

    def __init__(self, in_channels: int, num_keypoints: int):
        super().__init__()
        self.num_keypoints = num_keypoints
        self.fc_coord = NormLinear(in_channels, num_keypoints * 2)
        self.fc_sigma = PlainLinear(in_channels, num_keypoints * 2)

    def forward(self, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = feature.mean(dim=(2, 3))                                             # (B, C) global average pool
        mu = self.fc_coord(g).view(-1, self.num_keypoints, 2)
        sigma = self.fc_sigma(g).view(-1, self.num_keypoints, 2).sigmoid()
        return mu, sigma


# ----------------------------------------------------------------------------------------------------------
# Scores, flip test and decoding
# ----------------------------------------------------------------------------------------------------------
def uncertainty_score(sigma: torch.Tensor, a: float = 0.2, scale: float = 0.7) -> torch.Tensor:
    """Poseur's uncertainty score (paper Eq. 8): the Laplace mass within +-a of the prediction per axis,
    multiplied over x and y; the official code scales it by 0.7. sigma (..., 2) -> (...)."""
    p = 1 - torch.exp(-a / sigma)
    return scale * p[..., 0] * p[..., 1]


def keypoint_scores(sigma: torch.Tensor, kind: KeypointScore = "rle", a: float = 0.2, scale: float = 0.7) -> torch.Tensor:
    """Per-keypoint confidence (..., 2) -> (...): ``rle`` mean(1 - sigma) (RLE, the official no-flip score),
    ``uncertainty`` Eq. 8, ``none`` constant 1 (no rescoring; Poseur Table 1c)."""
    if kind == "rle":
        return (1 - sigma).mean(-1)
    if kind == "uncertainty":
        return uncertainty_score(sigma, a, scale)
    if kind == "none":
        return torch.ones_like(sigma[..., 0])
    raise ValueError(f"keypoint score: expected 'rle', 'uncertainty' or 'none', got {kind!r}")


def flip_back_coords(coords: torch.Tensor, flip_pairs: torch.Tensor, flip_center: float = 1.0) -> torch.Tensor:
    """Coordinates (..., K, 2) predicted on the mirrored crop -> original crop: swap left/right joints and
    u_x := flip_center - u_x.

    ``flip_center`` 1 mirrors normalised coordinates u = x_px / W around 0.5, as Poseur's official
    ``fliplr_rle_regression`` does, and is exact for UDP's u = x_px / (W - 1) (pixel x mirrors to (W - 1) - x);
    without UDP the exact pixel mirror of u = x_px / W is (W - 1) / W (TFPose)."""
    coords = coords[..., _left_right_permutation(coords.shape[-2], flip_pairs, coords.device), :]
    return torch.stack((flip_center - coords[..., 0], coords[..., 1]), dim=-1)


def flip_back(mu: torch.Tensor, sigma: torch.Tensor, flip_pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, sigma) of the mirrored crop -> original frame (``fliplr_rle_regression``): left/right joints swapped
    for both, u_x := 1 - u_x for the coordinates (the flip centre is 0.5 in normalised coordinates)."""
    perm = _left_right_permutation(mu.shape[-2], flip_pairs, mu.device)
    return flip_back_coords(mu, flip_pairs), sigma[..., perm, :]


def _left_right_permutation(num_keypoints: int, flip_pairs: torch.Tensor, device) -> torch.Tensor:
    """Index of each keypoint's mirror partner (itself when unpaired), from (P, 2) ``flip_pairs``."""
    perm = torch.arange(num_keypoints, device=device)
    if len(flip_pairs):
        perm[flip_pairs[:, 0]] = flip_pairs[:, 1]
        perm[flip_pairs[:, 1]] = flip_pairs[:, 0]
    return perm


def fuse_flip(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor,
              mode: FlipFusion = "default", kind: KeypointScore = "rle", a: float = 0.2,
              scale: float = 0.7) -> tuple[torch.Tensor, torch.Tensor]:
    """Fuse the normal pass (1) and the flipped-back pass (2): coordinates (B, K, 2) and scores (B, K).

    Official modes (``filp_fuse_type``, Poseur spec 1.5):
      default: mean of coordinates and of scores;
      type1:   score-weighted coordinates, score (s1 s2 (1 - |s1 - s2|))^2;
      type2:   weights p^5 with p the uncertainty score (a = 0.2, x 0.7), score (p1 + p2) / 2 (published AP).
    ``kind`` picks the score that default / type1 use (official: ``rle``); ``none`` gives constant scores.
    """
    if mode == "type2":
        p1, p2 = uncertainty_score(sigma1, a, scale), uncertainty_score(sigma2, a, scale)
        w1, w2 = (p1 ** 5)[..., None], (p2 ** 5)[..., None]
        mu = (mu1 * w1 + mu2 * w2) / (w1 + w2 + 1e-10)
        score = (p1 + p2) / 2
    else:
        s1, s2 = keypoint_scores(sigma1, kind, a, scale), keypoint_scores(sigma2, kind, a, scale)
        if mode == "default":
            mu, score = (mu1 + mu2) / 2, (s1 + s2) / 2
        elif mode == "type1":
            mu = (mu1 * s1[..., None] + mu2 * s2[..., None]) / (s1 + s2 + 1e-9)[..., None]
            score = (s1 * s2 * (1 - (s1 - s2).abs())) ** 2
        else:
            raise ValueError(f"flip fusion: expected 'default', 'type1' or 'type2', got {mode!r}")
    if kind == "none":
        score = torch.ones_like(score)
    return mu, score


class RLETopDownInference:
    """Inference shared by the top-down RLE models (the baseline and Poseur): eval ``forward(images)`` gives
    (mu, sigma) per keypoint in normalised crop coordinates; flip test with the configured fusion (Poseur spec
    1.5), keypoint scores from sigma, crop -> image pixels; per image the official rescoring and OKS-NMS.

    The model provides ``cfg`` (``flip_fusion``, ``keypoint_score``, ``uncertainty_a``, ``uncertainty_scale``,
    ``oks_nms_threshold``, ``rescore``) and the ``flip_pairs`` buffer (P, 2); the OKS sigmas are its layout's."""

    #: eval forward: (N, K, 2) normalised crop coordinates, (N, K, 2) their RLE scale
    output_names = ("coords", "sigma")

    @torch.no_grad()
    def predict(self, batch: dict, test_cfg) -> list[PoseResult]:
        resolve_test_scales(test_cfg, type(self).__name__, multi_scale=False)
        images = batch["images"]
        c = self.cfg
        mu, sigma = self(images)
        if getattr(test_cfg, "flip", False):
            mu_f, sigma_f = flip_back(*self(images.flip(3)), self.flip_pairs)
            mu, score = fuse_flip(mu, sigma, mu_f, sigma_f, c.flip_fusion, c.keypoint_score, c.uncertainty_a,
                                  c.uncertainty_scale)
        else:
            score = keypoint_scores(sigma, c.keypoint_score, c.uncertainty_a, c.uncertainty_scale)
        return decode_crops(mu, score, batch["metas"], tuple(images.shape[-2:]), {"sigma": sigma})

    def finalize(self, result: PoseResult, meta: dict) -> PoseResult:
        return topdown_finalize(result, self.keypoints.sigmas, self.cfg.oks_nms_threshold, self.cfg.rescore)


# ----------------------------------------------------------------------------------------------------------
# Data transform
# ----------------------------------------------------------------------------------------------------------
def topdown_regression_transform(cfg, train: bool) -> TopDownRegressionTransform:
    """The ``MethodSpec.transform`` of Poseur and RLE: the top-down regression codec's crops and coordinate targets."""
    return topdown_transform(cfg, train)
