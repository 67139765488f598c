"""The RLE baseline network: backbone -> last level -> :class:`~regpose.models.topdown_regression.CoarseRLEHead`,
with the RealNVP flow its loss needs in training."""
from __future__ import annotations

import torch
from torch import nn

from ...data.keypoints import KeypointMeta
from ..backbones import build_backbone
from ..base import PoseModel
from ..layers.rle import RealNVP
from ..topdown_regression import CoarseRLEHead, RLETopDownInference
from .config import RLEConfig
from .loss import rle_regression_loss

__all__ = ["RLERegression", "build_rle"]


class RLERegression(RLETopDownInference, PoseModel):
    """Backbone -> last level -> :class:`CoarseRLEHead`; RLE loss with a RealNVP flow in training. Eval
    ``forward`` gives (mu, sigma) (B, K, 2) in normalised crop coordinates (decoded by the shared
    :class:`RLETopDownInference`)."""

    def __init__(self, cfg: RLEConfig, keypoints: KeypointMeta):
        super().__init__()
        self.cfg = cfg
        self.set_keypoints(keypoints)
        self.backbone = build_backbone(cfg.backbone, (cfg.feature_index,))
        self.head = CoarseRLEHead(self.backbone.channels[-1], self.num_keypoints)
        # The original RLE regresses offsets from the crop centre (frame [-0.5, 0.5]); in our [0, 1] frame the same
        # start (predictions at the centre) is a bias of 0.5.
        nn.init.constant_(self.head.fc_coord.linear.bias, 0.5)
        self.flow = RealNVP(cfg.flow_hidden, cfg.flow_layers, tuple(cfg.prior_mean))
        self.register_buffer("flip_pairs", torch.as_tensor(keypoints.flip_pairs, dtype=torch.long).reshape(-1, 2),
                             persistent=False)

    def forward(self, images: torch.Tensor, targets: list[dict] | None = None):
        mu, sigma = self.head(self.backbone(images)[-1])
        if targets is None:
            return mu, sigma
        target = torch.stack([t["coords"] for t in targets]).to(mu)                    # (B, K, 2)
        weight = torch.stack([t["coord_weights"] for t in targets]).to(mu)             # (B, K, 2)
        return rle_regression_loss(mu, sigma, target, weight, self.flow, self.cfg.loss_normalizer)


def build_rle(cfg, keypoints: KeypointMeta) -> RLERegression:
    """The network a full ``Config`` describes for the keypoint layout ``keypoints``."""
    return RLERegression(cfg.model, keypoints)
