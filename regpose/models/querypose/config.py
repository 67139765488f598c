"""QueryPose's knobs: the paper's settings and ablation switches (Tables 1-3), and its part divisions (Fig. 4).

Implementation switches that never change the outputs (Winograd convolutions, worker threads, channels-last
memory) are runtime options (``cfg.runtime``), passed to :class:`~regpose.models.querypose.model.QueryPose` by its
builder."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from ...data.keypoints import KeypointMeta
from ...errors import ConfigError
from ..backbones import BackboneConfig

__all__ = ["QueryPoseConfig", "part_groups", "flip_permutation"]


@dataclass
class QueryPoseConfig:
    """QueryPose's knobs. Defaults = the official R50 config (``querypose.res50.100pro.3x.yaml``) and the
    paper's best ablation settings (part queries, SPEGM, SIM, 7-part scheme (c), dp = 128, Fig. 3(b))."""
    #: keys that left this section, named in the "unknown key" error
    __moved_keys__ = {"conv_impl": "runtime.conv_impl", "parallel_chunks": "runtime.parallel_chunks",
                      "channels_last": "runtime.channels_last"}
    # ---- backbone and neck (spec 1)
    # resnet50 / hrnet_w32 / hrnet_w48 / swin_*; ResNet: detectron2 FrozenBN and FREEZE_AT 2 (stem + res2) as
    # official, HRNet / Swin configs: trainable BatchNorm, nothing frozen
    backbone: BackboneConfig = field(default_factory=lambda: BackboneConfig("resnet50", norm="frozen_bn",
                                                                            freeze_at=2))
    neck: Literal["fpn", "hrfpn", "hrfpn_v1"] = "fpn"
    hidden_dim: int = 256                   # d: FPN channels and instance-query width
    # ---- box decoder (Sparse R-CNN, spec 3)
    num_proposals: int = 100                # N
    num_stages: int = 6                     # S
    num_heads: int = 8                      # attention heads (instance and part self-attention)
    dim_feedforward: int = 2048
    dim_dynamic: int = 64
    num_cls_layers: int = 1
    num_reg_layers: int = 3
    box_pooler_resolution: int = 7
    sampling_ratio: int = 2
    # ---- keypoint decoder (spec 4)
    kpt_pooler_resolution: int = 14
    num_convs: int = 6
    part_dim: int = 128                     # dp (Table 2c)
    part_scheme: Literal["a", "b", "c", "d"] = "c"   # Fig. 4 / Table 2d; (c) is the official 7-part division
    light: bool = False                     # official LIGHT_VERSION: no instance-query dynamic MLP + FFN
    # ---- ablation switches (Tables 1-3)
    query_type: Literal["part", "instance"] = "part"          # Table 1: part-level (PQ) or instance-level (IQ)
    interaction: Literal["spegm", "mhsa", "dymlp_channel", "dymlp_spatial", "gap"] = "spegm"
    #   Table 1 / 2b: how RoI features become part embeddings. spegm = spatial attention (IQ: "Spatial Attn."),
    #   gap = Table 2b baseline (global average pooling, no spatial attention).
    iteration: Literal["selective", "summation", "concatenation", "none"] = "selective"   # Table 2a (SIM)
    query_handoff: Literal["official", "serial", "parallel"] = "official"
    #   non-light only (Fig. 3 / spec 0.2): serial = the keypoint decoder's refined instance query feeds the
    #   next box stage (Fig. 3b); parallel = it never does (Fig. 3a); official = serial for the matched queries
    #   in training, parallel at inference (what the released code does).
    keep_unused_official: bool = True       # keep parameters the official model holds but never uses
    #   (SIM fc3 / norm_fc3, HRFPN fpn_conv.4, HRFPN_v1 lateral_conv.0 / fpn_conv.4) so parameter counts
    #   and state dicts equal the released ones; they never change an output.
    # ---- losses (spec 5, 6)
    class_weight: float = 2.0
    l1_weight: float = 5.0
    giou_weight: float = 2.0
    kpt_weight: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    prior_prob: float = 0.01
    deep_supervision: bool = True
    flow_hidden: int = 64
    flow_layers: int = 6
    # ---- input (spec 1): RGB in 0..255 normalised by mean / std; augmentation is cfg.data.augment.onestage
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    # ---- test time (ours)
    fast_topk: int = 0
    #   > 0: decode keypoints only for the proposals that can reach the top ``fast_topk`` pose scores (the
    #   box decoder runs for all N first; pose score <= class probability bounds the rest). The returned
    #   top-``fast_topk`` people are identical to the full model's; lower-ranked proposals are dropped.
    flip_fusion_iou: float = 0.5            # flip test (ours): pair original / flipped people above this IoU

    def __post_init__(self):
        if self.num_convs < 1 or self.num_stages < 1 or self.num_proposals < 1:
            raise ValueError("num_convs, num_stages and num_proposals must be >= 1")
        if self.part_dim % 4 != 0:
            raise ValueError(f"part_dim must be a multiple of 4 (SIM bottleneck dp/4), got {self.part_dim}")


# ----------------------------------------------------------------------------------------------------------
# Part divisions (paper Fig. 4) and the flip permutation, from the keypoint layout
# ----------------------------------------------------------------------------------------------------------
def part_groups(keypoints: KeypointMeta, scheme: str = "c", query_type: str = "part") -> list[list[int]]:
    """Keypoint indices of each part query in the layout ``keypoints`` (:mod:`regpose.data.keypoints`; scheme (c) is
    the official 7-part division, keypoints inside a part in the official regressors' output order, spec 4.8).
    ``query_type='instance'`` (Table 1 "IQ") uses one query for all keypoints."""
    if query_type == "instance":
        return [list(range(keypoints.num_keypoints))]
    if scheme not in keypoints.part_schemes:
        raise ConfigError(f"model.part_scheme: the {keypoints.name} keypoint layout has no part division "
                          f"{scheme!r} (it has {sorted(keypoints.part_schemes)}; a declared layout gets 'c' from "
                          f"data.keypoints.parts)")
    return keypoints.parts(scheme)


def flip_permutation(keypoints: KeypointMeta) -> torch.Tensor:
    """Index permutation swapping left / right keypoints (the layout's flip index)."""
    return torch.tensor(np.array(keypoints.flip_index), dtype=torch.long)
