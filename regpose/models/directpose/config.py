"""DirectPose's knobs (spec §9: the paper's best setting by default) and the KPAlign keypoint groups."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ...data.keypoints import KeypointMeta
from ...errors import ConfigError
from ..backbones import BackboneConfig

__all__ = ["DirectPoseConfig", "NUM_LEVELS", "COCO_KPALIGN_GROUPS", "resolve_keypoint_groups"]

NUM_LEVELS = 5                      # P3-P7, strides 8..128 (spec §2)

#: The 9 KPAlign keypoint groups on COCO-17 (spec §4.3; identical in both public implementations).
COCO_KPALIGN_GROUPS: tuple[tuple[int, ...], ...] = (
    (0, 1, 2, 3, 4),   # face: nose, eyes, ears
    (5,),              # l_shoulder
    (7, 9),            # l_elbow, l_wrist
    (6,),              # r_shoulder
    (8, 10),           # r_elbow, r_wrist
    (11,),             # l_hip
    (13, 15),          # l_knee, l_ankle
    (12,),             # r_hip
    (14, 16),          # r_knee, r_ankle
)


@dataclass
class DirectPoseConfig:
    """Every knob of DirectPose; defaults are the paper's best setting (spec §9)."""
    # --- backbone / neck (spec §2) ---
    # C3-C5 (strides 8, 16, 32) feed the FPN. Assumption (spec §2): the FCOS / detectron2 defaults, FrozenBN and
    # FREEZE_AT = 2 (stem + res2).
    backbone: BackboneConfig = field(default_factory=lambda: BackboneConfig("resnet50", norm="frozen_bn",
                                                                            freeze_at=2))
    fpn_channels: int = 256                    # P3-P7; P6/P7 from P5 (FCOS "TOP_LEVELS = 2")

    # --- shared head shape ---
    head_channels: int = 256                   # cls / box towers, naive and non-separate keypoint towers
    num_convs: int = 4                         # convs per tower
    use_scale: bool = False                    # per-level learnable scale on regression outputs (§4.1)
    # Assumption (spec §4.1): centerness on the keypoint tower, as in the only published DirectPose config.
    ctr_on: Literal["cls", "kpt"] = "kpt"      # which tower feeds centerness

    # --- keypoint head (spec §4.2-4.3) ---
    head: Literal["kpalign", "naive"] = "kpalign"
    kpalign_groups: int = 9                    # 9 (spec table) / K (one group per keypoint) / 1
    keypoint_groups: list[list[int]] = field(default_factory=list)  # explicit partition (overrides the above)
    separate_feats: bool = True                # per-group feature streams (grouped convs)
    group_channels: int = 64                   # channels per group stream
    sample_level: Literal["lower", "lower_face_p3", "same"] = "lower"
    locator_loss: bool = False                 # direct supervision of the locator's base points
    locator_loss_weight: float = 1.0
    kpt_visibility_head: bool = False          # extra per-keypoint visibility logit ([GCV] KPT_VIS)
    predictor_init: Literal["normal", "kaiming_uniform"] = "normal"

    # --- auxiliary heatmap branch, training only (spec §4.4) ---
    heatmap_aux: bool = True
    hm_weight: float = 4.0
    hm_target: Literal["binary", "gaussian"] = "binary"
    hm_level: Literal["p3", "p3_upsampled"] = "p3"   # stride-8 heatmap, or stride 4 (P3 tower upsampled x2)
    hm_channels: int = 128
    hm_num_convs: int = 2
    hm_sigma: float = 1.0                      # gaussian targets only, in heatmap cells

    # --- optional FCOS box branch (spec §4.5) ---
    bbox_branch: bool = False
    box_loss_weight: float = 1.0

    # --- FCOS assignment (spec §3) ---
    sizes_of_interest: list[float] = field(default_factory=lambda: [64.0, 128.0, 256.0, 512.0])
    center_sampling_radius: float = 1.5        # 0 disables center sampling (inside the box instead)
    assign_box: Literal["gt_box", "keypoint_box"] = "gt_box"     # spec default [MB]; [GCV] keypoint boxes

    # --- losses (spec §5) ---
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    kpt_loss: Literal["l1_ctr", "smoothl1_ctr_nvis"] = "l1_ctr"   # spec default [MB]; [GCV] uses smooth-L1
    kpt_loss_weight: float = 1.0
    visibility_loss_weight: float = 1.0

    # --- inference (spec §7) ---
    pre_nms_thresh: float = 0.05               # on sigmoid(cls), before centerness
    pre_nms_topk: int = 1000                   # per level, by cls x ctr
    nms_iou: float = 0.6
    nms_box: Literal["auto", "keypoints", "box"] = "auto"   # auto: predicted box if bbox_branch else extent

    # --- input normalisation (augmentation lives in data.augment.onestage) ---
    # Assumption (spec §2): timm / torchvision ImageNet weights expect RGB with ImageNet mean/std, not
    # detectron2's BGR MSRA convention, so that is the default normalisation.
    pixel_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    pixel_std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    #: keys that left this section, named in the "unknown key" error
    __moved_keys__ = {"num_keypoints": "data.keypoints"}

    def __post_init__(self):
        if len(self.sizes_of_interest) != NUM_LEVELS - 1 or sorted(self.sizes_of_interest) != list(
                self.sizes_of_interest):
            raise ConfigError(f"model.sizes_of_interest: expected {NUM_LEVELS - 1} increasing level boundaries "
                              f"(P3..P7), got {self.sizes_of_interest}")
        if self.separate_feats and self.group_channels % 4:
            raise ConfigError(f"model.group_channels: expected a multiple of 4 (GroupNorm with 4 channels per "
                              f"group), got {self.group_channels}")
        if self.nms_box == "box" and not self.bbox_branch:
            raise ConfigError("model.nms_box: 'box' needs model.bbox_branch: true")


def resolve_keypoint_groups(cfg: DirectPoseConfig, keypoints: KeypointMeta) -> list[list[int]]:
    """The KPAlign keypoint partition of the layout ``keypoints``: explicit ``keypoint_groups``, or the preset
    ``kpalign_groups`` names (9: the spec's groups of the COCO-17 layout)."""
    K = keypoints.num_keypoints
    if cfg.keypoint_groups:
        groups = [list(g) for g in cfg.keypoint_groups]
        flat = sorted(k for g in groups for k in g)
        if flat != list(range(K)) or any(not g for g in groups):
            raise ConfigError(f"model.keypoint_groups: expected a partition of keypoints 0..{K - 1} into non-empty "
                              f"groups, got {cfg.keypoint_groups}")
        return groups
    if cfg.kpalign_groups == 1:
        return [list(range(K))]
    if cfg.kpalign_groups == K:
        return [[k] for k in range(K)]
    if cfg.kpalign_groups == 9 and keypoints.name in ("coco", "ochuman"):
        return [list(g) for g in COCO_KPALIGN_GROUPS]
    raise ConfigError(f"model.kpalign_groups: expected 1, {K} (one group per keypoint) or, for the COCO-17 layout, "
                      f"9, got {cfg.kpalign_groups} for the {keypoints.name} layout; or set model.keypoint_groups to "
                      f"an explicit partition")

