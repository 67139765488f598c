"""DirectPose (Tian, Chen, Shen, arXiv:1911.07451): one-stage keypoint regression on FCOS with KPAlign.

FCOS on a ResNet-FPN (P3-P7) whose box output is replaced by 2K keypoint offsets per location: a location
that FCOS assigns to a person regresses all K keypoints of that person relative to itself. Person score =
sqrt(classification x centerness); the only post-processing is NMS. Three additions make it work (spec §1):
KPAlign (a locator picks one point per keypoint group, features sampled there on a finer map feed the
keypoint predictor), grouped KPAlign with separate per-group feature streams, and an auxiliary keypoint
heatmap branch used in training only.

No official code exists. ``../shared/reference/directpose/spec.md`` is the authority; choices the spec marks
as assumptions (or that it leaves open) are flagged ``# Assumption (spec §x): ...``.

Files: ``config.py`` (knobs, KPAlign groups), ``heads.py`` (classification, naive keypoint, KPAlign, heatmap),
``model.py`` (the network and its builder), ``loss.py`` (FCOS assignment, targets, losses), ``decode.py``
(candidates -> NMS -> people), ``transform.py`` (data pipeline).
"""
from ..registry import MethodSpec, register_method
from .config import COCO_KPALIGN_GROUPS, NUM_LEVELS, DirectPoseConfig, resolve_keypoint_groups
from .decode import decode_candidates
from .heads import HeatmapHead, KPAlignHead, NaiveKeypointHead
from .loss import centerness_target, fcos_assign, heatmap_targets, keypoint_loss
from .model import DirectPose, build_directpose, compute_locations
from .transform import directpose_transform

__all__ = [
    "DirectPoseConfig", "DirectPose", "build_directpose", "directpose_transform",
    "COCO_KPALIGN_GROUPS", "resolve_keypoint_groups", "KPAlignHead", "NaiveKeypointHead", "HeatmapHead",
    "NUM_LEVELS", "compute_locations", "fcos_assign", "centerness_target", "keypoint_loss", "heatmap_targets",
    "decode_candidates",
]

register_method(MethodSpec(name="directpose", config_cls=DirectPoseConfig, build=build_directpose,
                           family="onestage", transform=directpose_transform))
