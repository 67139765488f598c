"""Poseur's knobs (``model:`` section of ``method: poseur``): the paper's ablation switches with the released
checkpoints' values as defaults. How it computes (deformable-attention sampler, channels-last) is ``runtime:``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..backbones import BackboneConfig
from ..topdown_regression import FlipFusion, KeypointScore

__all__ = ["PoseurConfig"]


@dataclass
class PoseurConfig:
    """Poseur's knobs. Defaults = the released R50 / HRNet-W32 256x192 checkpoints (6 decoder layers, EMSDA,
    3 noisy query groups, type2 flip fusion as in the README's evaluation command)."""
    # backbone and neck
    backbone: BackboneConfig = field(default_factory=BackboneConfig)   # resnet50/152, hrnet_w32/w48, mobilenetv2_100
    feature_levels: list[int] = field(default_factory=lambda: [1, 2, 3, 4])   # timm indices (strides 4..32), Table 1d
    embed_dim: int = 256
    # decoder
    num_decoder_layers: int = 6                # Table 1e
    share_decoder_weights: bool = False        # supplementary Table 3
    self_attention: bool = True                # supplementary Table 2
    self_attn_heads: int = 8
    cross_attention: Literal["emsda", "msda"] = "emsda"   # supplementary Table 4
    num_heads: int = 8                         # deformable attention heads (official EMSDA hard-codes 8)
    num_points: int = 4
    ffn_dim: int = 1024
    dropout: float = 0.1
    # keypoint encoder / query initialisation
    query_init: Literal["coarse", "learned"] = "coarse"   # Table 1a: coarse proposal vs Deformable-DETR learned
                                               # queries (reference = sigmoid(Linear(class embedding)), no noise)
    num_noise_groups: int = 3                  # noisy reference point groups in training (Table 1b; 0 = off)
    noise_points_per_group: int = 4
    noise_variance: float = 0.2                # N(0, 0.2 I): variance 0.2 (official ``noise_sigma``)
    # RLE
    flow_hidden: int = 64
    flow_layers: int = 6
    prior_mean: tuple[float, float] = (0.5, 0.5)    # Official code: flow prior mean 0.5 (RLE uses 0)
    # inference
    keypoint_score: KeypointScore = "rle"      # without flip (and for default/type1 fusion): official mean(1 - sigma)
    flip_fusion: FlipFusion = "type2"          # default / type1 / type2 (published AP: type2)
    uncertainty_a: float = 0.2                 # paper Eq. 8
    uncertainty_scale: float = 0.7             # Official code: the uncertainty score is scaled by 0.7
    oks_nms_threshold: float = 0.9
    rescore: bool = True                       # instance score = box score + mean + max keypoint score

    #: implementation switches that left for the ``runtime:`` section (named in the "unknown key" error).
    __moved_keys__ = {"sampler": "runtime.attention_sampler", "channels_last": "runtime.channels_last",
                      "num_keypoints": "data.keypoints"}
