"""DEKR: bottom-up human pose estimation via disentangled keypoint regression (Geng et al., CVPR 2021).

One network predicts, at stride 4, K keypoint heatmaps + a person-center heatmap, and for every pixel the 2-D
offsets from that pixel to each of the K keypoints of the person centred there. The offset branch is split into K
branches, each with its own adaptive convolutions (:mod:`regpose.models.layers.adaptive_conv`), so each keypoint
learns its own representation ("disentangled"). People are read off the center heatmap (NMS, top-k), their poses are
the regressed offsets at the center, scored by the keypoint heatmaps, de-duplicated by pose NMS and optionally
rescored by a small OKS-predicting net.

Everything follows the official code (HRNet/DEKR @ 7a30313; ``../shared/reference/dekr/spec.md``), including its
quirks, so converted official checkpoints reproduce the official outputs; those places say ``Official code:``.

Files: ``config.py`` (knobs, keypoint layout), ``model.py`` (HRNet concat trunk, heads, the network, builder),
``loss.py`` (heatmap and offset losses), ``decode.py`` (official inference pipeline: outputs -> people),
``rescore.py`` (the OKS-predicting rescoring net), ``transform.py`` (training and test samples through DEKR's codec,
:mod:`regpose.codecs.heatmap_offset`: targets, official test resize, map back to the image).
Training the rescoring net is :mod:`regpose.engine.rescore` (``regpose train-rescore``).
"""
from ..registry import MethodSpec, register_method
from .config import DEKRConfig
from .decode import (center_proposals, flip_input, match_pose_to_heatmap, merge_flip, offset_to_pose, pose_nms,
                     run_pipeline, up_interpolate)
from .loss import heatmap_loss, offset_loss
from .model import DEKR, AdaptBlock, HeatmapHead, HRNetConcat, OffsetHead, build_dekr
from .rescore import RESCORE_LINKS, PoseRescorer, PredictOKSNet, rescore_features
from .transform import DEKREvalTransform, DEKRTrainTransform, dekr_transform

__all__ = [
    "DEKRConfig", "DEKR", "build_dekr", "dekr_transform", "DEKRTrainTransform", "DEKREvalTransform",
    "HeatmapHead", "OffsetHead", "AdaptBlock", "HRNetConcat", "PredictOKSNet", "PoseRescorer",
    "heatmap_loss", "offset_loss", "flip_input",
    "offset_to_pose", "merge_flip", "up_interpolate", "center_proposals", "pose_nms", "match_pose_to_heatmap",
    "run_pipeline", "rescore_features", "RESCORE_LINKS",
]

register_method(MethodSpec(name="dekr", config_cls=DEKRConfig, build=build_dekr, family="bottomup",
                           transform=dekr_transform,
                           converter="regpose.compat.dekr",
                           commands={"train-rescore": "regpose.cli.rescore"}))
