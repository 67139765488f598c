"""DEKR's knobs (defaults = the official W32 COCO model, official config names in comments)."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..backbones import BackboneConfig

__all__ = ["DEKRConfig", "eval_input_size"]


@dataclass
class DEKRConfig:
    """DEKR's knobs, defaults = the official W32 COCO model (official config names in comments)."""
    #: keys that left this section, named in the "unknown key" error
    __moved_keys__ = {"adaptive_conv_impl": "runtime.adaptive_conv_impl"}
    # backbone: timm HRNet (its structure and key names equal the official trunk); overrides for other sizes.
    # name: MODEL.SPEC.STAGES via the timm variant (hrnet_w32 / hrnet_w48); weights: MODEL.PRETRAINED
    backbone: BackboneConfig = field(default_factory=lambda: BackboneConfig("hrnet_w32"))
    # branch widths: the 4 of the last stage (earlier stages use its first 2 and 3), or one list per stage 2-4 as
    # the official STAGES.NUM_CHANNELS; [] = the timm variant's
    hrnet_channels: list[int | list[int]] = field(default_factory=list)
    hrnet_modules: list[int] = field(default_factory=list)    # modules of stages 2-4 (NUM_MODULES); [] = [1, 4, 3]
    # BasicBlocks per branch of stages 2-4 (STAGES.NUM_BLOCKS): one count per stage, or a list per stage with one
    # count per branch (e.g. [[2, 1], [1, 1, 1], [1, 1, 1, 1]]); [] = [4, 4, 4]
    hrnet_blocks: list[int | list[int]] = field(default_factory=list)
    hrnet_layer1_blocks: int = 0                 # Bottlenecks in layer1; 0 = official 4 (small CPU models: fewer)
    hrnet_layer1_planes: int = 0                 # their planes (x4 out); 0 = official 64
    # heads
    head_heatmap_channels: int = 32              # HEAD_HEATMAP.NUM_CHANNELS (W48: 48)
    head_heatmap_blocks: int = 1                 # HEAD_HEATMAP.NUM_BLOCKS
    head_heatmap_dilation: int = 1               # HEAD_HEATMAP.DILATION_RATE
    offset_channels_per_keypoint: int = 15       # HEAD_OFFSET.NUM_CHANNELS_PERKPT
    offset_blocks: int = 2                       # HEAD_OFFSET.NUM_BLOCKS (adaptive blocks per keypoint branch)
    final_conv_kernel: int = 1                   # MODEL.SPEC.FINAL_CONV_KERNEL
    # paper ablations (Sec. 4.3), all on in the paper's best setting
    adaptive_conv: bool = True                   # adaptive convolutions in the offset branches (off: regular 3x3)
    multi_branch: bool = True                    # one branch per keypoint (off: a single shared regression branch)
    offset_loss_normalization: bool = True       # offset loss weighted by 1/sqrt(person area) (off: weight 1)
    # targets and losses (DATASET.SIGMA, CENTER_SIGMA, BG_WEIGHT, OFFSET_RADIUS; LOSS.*_FACTOR)
    sigma: float = 2.0
    center_sigma: float = 4.0                    # Official code: only channel index >= 17 uses it (CrowdPose: SIGMA)
    bg_weight: float = 0.1
    offset_radius: int = 4
    heatmap_loss_factor: float = 1.0
    offset_loss_factor: float = 0.03
    # augmentation: the bottom-up section of the data config (cfg.data.augment.bottomup), DEKR's official values
    # test (TEST.*; flip and scales are cfg.test.flip / cfg.test.scales)
    test_input_size: int = 0                     # DATASET.INPUT_SIZE for the resize policy; 0 = min(data.input_size)
    max_num_people: int = 30                     # DATASET.MAX_NUM_PEOPLE
    keypoint_threshold: float = 0.01             # TEST.KEYPOINT_THRESHOLD (center score)
    pool_threshold1: int = 300                   # TEST.POOL_THRESHOLD1 (7x7 center NMS above this map size)
    pool_threshold2: int = 200                   # TEST.POOL_THRESHOLD2 (5x5 above this, else 3x3)
    nms_threshold: float = 0.05                  # TEST.NMS_THRE (multi-scale: 0.15)
    nms_num_threshold: int = 8                   # TEST.NMS_NUM_THRE (CrowdPose: 7)
    decrease: float = 0.9                        # TEST.DECREASE (CrowdPose: 0.8)
    match_hmp: bool = False                      # TEST.MATCH_HMP: snap to heatmap peaks + Gaussian refinement
    adjust_threshold: float = 0.05               # TEST.ADJUST_THRESHOLD
    max_absorb_distance: float = 75.0            # TEST.MAX_ABSORB_DISTANCE
    gaussian_kernel: int = 6                     # TEST.GUASSIAN_KERNEL
    # rescoring net (RESCORE.*): applied when weights are given
    rescore_weights: str = ""                    # RESCORE.MODEL_FILE ('' = no rescoring)
    rescore_hidden: int = 256                    # RESCORE.HIDDEN_LAYER


def eval_input_size(cfg) -> int:
    """The official test resize's DATASET.INPUT_SIZE of a full config: ``model.test_input_size``, or the smaller
    side of ``data.input_size``."""
    return cfg.model.test_input_size or int(min(cfg.data.input_size))
