"""The RLE baseline network: backbone -> last level -> :class:`~regpose.models.topdown_regression.CoarseRLEHead`,
with the RealNVP flow its loss needs in training."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..backbones import build_backbone
from ..base import PoseModel
from ..layers.rle import RealNVP
from ..topdown_regression import CoarseRLEHead, RLETopDownInference, keypoint_meta_for
from .config import RLEConfig
from .loss import rle_regression_loss

__all__ = ["RLERegression", "build_rle"]


class RLERegression(RLETopDownInference, PoseModel):
    """Backbone -> last level -> :class:`CoarseRLEHead`; RLE loss with a RealNVP flow in training. Eval
    ``forward`` gives (mu, sigma) (B, K, 2) in normalised crop coordinates (decoded by the shared
    :class:`RLETopDownInference`)."""

    def __init__(self, cfg: RLEConfig, flip_pairs: torch.Tensor, sigmas: np.ndarray):
        super().__init__()
        self.cfg = cfg
        self.num_keypoints = cfg.num_keypoints
        self.backbone = build_backbone(cfg.backbone, (cfg.feature_index,))
        self.head = CoarseRLEHead(self.backbone.channels[-1], cfg.num_keypoints)
        # The original RLE regresses offsets from the crop centre (frame [-0.5, 0.5]); in our [0, 1] frame the same
        # start (predictions at the centre) is a bias of 0.5.
        nn.init.constant_(self.head.fc_coord.linear.bias, 0.5)
        self.flow = RealNVP(cfg.flow_hidden, cfg.flow_layers, tuple(cfg.prior_mean))
        self.register_buffer("flip_pairs", torch.as_tensor(flip_pairs, dtype=torch.long).reshape(-1, 2), persistent=False)
        self.sigmas = np.asarray(sigmas, dtype=np.float64)

    def forward(self, images: torch.Tensor, targets: list[dict] | None = None):
        mu, sigma = self.head(self.backbone(images)[-1])
        if targets is None:
            return mu, sigma
        target = torch.stack([t["coords"] for t in targets]).to(mu)                    # (B, K, 2)
        weight = torch.stack([t["coord_weights"] for t in targets]).to(mu)             # (B, K, 2)
        return rle_regression_loss(mu, sigma, target, weight, self.flow, self.cfg.loss_normalizer)


def build_rle(cfg) -> RLERegression:
    """The network a full ``Config`` describes, with the data format's flip pairs and OKS sigmas."""
    info = keypoint_meta_for(cfg)
    return RLERegression(cfg.model, info.flip_pairs, info.sigmas)
