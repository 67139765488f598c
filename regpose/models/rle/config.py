"""The RLE baseline's knobs (``model:`` section of ``method: rle``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..backbones import BackboneConfig
from ..topdown_regression import FlipFusion, KeypointScore

__all__ = ["RLEConfig"]


@dataclass
class RLEConfig:
    """RLE baseline (GAP + FC + RLE). Defaults follow the original RLE code: flow prior mean 0, loss summed over
    keypoints and divided by the batch size, 'linear with norm' coordinates."""
    backbone: BackboneConfig = field(default_factory=BackboneConfig)   # paper configs: torchvision ImageNet R-50
    feature_index: int = 4                  # timm feature index pooled by the head (4: stride 32)
    flow_hidden: int = 64
    flow_layers: int = 6
    prior_mean: tuple[float, float] = (0.0, 0.0)
    loss_normalizer: Literal["batch", "batch_keypoints"] = "batch"
    keypoint_score: KeypointScore = "rle"
    uncertainty_a: float = 0.2
    uncertainty_scale: float = 0.7
    flip_fusion: FlipFusion = "default"
    oks_nms_threshold: float = 0.9
    rescore: bool = True                     # instance score = box score + mean + max of keypoint scores

    #: keys that left this section, named in the "unknown key" error
    __moved_keys__ = {"num_keypoints": "data.keypoints"}
