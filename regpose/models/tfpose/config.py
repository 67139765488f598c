"""TFPose's knobs (``model:`` section of ``method: tfpose``): the paper's best setting by default, with its ablation
switches. How it computes (the deformable-attention sampler) is ``runtime:``."""
from __future__ import annotations

from dataclasses import dataclass, field

from ...errors import ConfigError
from ..backbones import BackboneConfig

__all__ = ["TFPoseConfig", "check_data"]


@dataclass
class TFPoseConfig:
    """TFPose's knobs. Defaults are the paper's best setting (R-50, N_E = 6, N_D = 6, C = 256, q2q on, aux on).

    The ``udp`` switch of the spec is ``data.augment.topdown.udp`` (one source of truth for the crop, the targets,
    the flip test and the decoding); TFPose configs set it to true as the paper does."""
    backbone: BackboneConfig = field(default_factory=BackboneConfig)   # resnet50 (main results) / resnet18
    # Assumption (spec §2): C3-C5 (strides 8/16/32); the paper's text says C2-C5 but its GFLOPs rule C2 out.
    levels: list[int] = field(default_factory=lambda: [3, 4, 5])
    embed_dim: int = 256                        # C: 128 / 256 (Table 2)
    ffn_dim: int = 0                            # 0: 4 * embed_dim (1024 for C = 256, confirmed by the FLOPs)
    num_heads: int = 8
    num_points: int = 4                         # sampling points per head and level
    num_encoder_layers: int = 6                 # N_E: 4 (light model) / 6; the R-18 ablations use 2 or 6
    num_decoder_layers: int = 6                 # N_D (Table 3)
    dropout: float = 0.1
    q2q_attention: bool = True                  # query-to-query self-attention in the decoder (Table 1)
    iterative_refine: bool = True               # Eq. 4; off: every layer refines the fixed J_0 (Deformable DETR)
    detach_ref: bool = False                    # detach J_{d-1} between layers (Deformable DETR does; Poseur not)
    deep_supervision: bool = True               # L1 on every decoder layer (Eq. 5); off: last layer only
    coord_loss_weight: float = 1.0
    aux_heatmap: bool = True                    # auxiliary heatmap loss in training (Table 4)
    aux_level: int = 5                          # memory level the heatmap head reads (5: C5 x8, 3: C3 x2)
    aux_channels: int = 256                     # deconvolution width (SimpleBaseline)
    aux_loss_weight: float = 10.0               # lambda of Eq. 7
    aux_sigma: float = 2.0                      # Gaussian sigma on the stride-4 heatmap
    oks_nms_threshold: float = 0.9              # per-image OKS-NMS over crops (mmpose top-down evaluation)

    #: implementation switches that left for the ``runtime:`` section (named in the "unknown key" error).
    __moved_keys__ = {"sampler": "runtime.attention_sampler", "num_keypoints": "data.keypoints"}

    def __post_init__(self):
        if not self.levels or any(int(v) not in (2, 3, 4, 5) for v in self.levels) or \
                list(self.levels) != sorted(set(self.levels)):
            raise ValueError(f"levels: expected increasing backbone levels from 2..5 (C2..C5), got {self.levels}")
        if self.aux_heatmap and self.aux_level not in self.levels:
            raise ValueError(f"aux_level: {self.aux_level} is not one of the memory levels {self.levels}")
        if self.embed_dim % self.num_heads or self.embed_dim % 2:
            raise ValueError(f"embed_dim: {self.embed_dim} must be even and divisible by num_heads {self.num_heads}")
        if self.num_decoder_layers < 1:
            raise ValueError(f"num_decoder_layers: expected >= 1, got {self.num_decoder_layers}")
        if self.num_encoder_layers < 0:
            raise ValueError(f"num_encoder_layers: expected >= 0, got {self.num_encoder_layers}")
        if self.embed_dim % 32:
            raise ValueError(f"embed_dim: {self.embed_dim} must be a multiple of 32 (GroupNorm(32) in the input "
                             f"projection)")

    @property
    def ffn_width(self) -> int:
        return self.ffn_dim or 4 * self.embed_dim


def check_data(cfg) -> None:
    """Check that a full ``Config``'s data section fits TFPose: an input size the coarsest memory level divides."""
    w, h = (int(v) for v in cfg.data.input_size)
    stride = 2 ** max(cfg.model.levels)
    if w % stride or h % stride:
        raise ConfigError(f"data.input_size: {w}x{h} must be a multiple of {stride} (the coarsest memory level "
                          f"C{max(cfg.model.levels)}), e.g. 192x256")
