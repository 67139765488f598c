"""TFPose (Mao et al., "TFPose: Direct Human Pose Estimation with Transformers", arXiv 2103.15320).

Top-down, one person per crop: ResNet C3..C5 -> deformable encoder -> K keypoint queries refined layer by layer in
logit space (paper Eq. 4) -> K (x, y) in [0, 1] of the crop. Training: L1 on every decoder layer (Eq. 5) + lambda x
the MSE of an auxiliary heatmap head (Eq. 6-7), which never runs in eval.

  config.py     TFPoseConfig (the paper's knobs), check_data (the data section fits the model)
  model.py      TFPose (the network), build_tfpose
  loss.py       tfpose_losses (Eq. 5-7)
  decode.py     normalised coordinates -> people
  transform.py  tfpose_transform (the top-down regression codec + auxiliary heatmap targets)

No official code was released: ``../shared/reference/tfpose/spec.md`` (the paper plus the structure pinned by its
GFLOPs columns) is the authority. Choices the paper leaves open are marked ``# Assumption (spec §x)``.
"""
from __future__ import annotations

from ..registry import MethodSpec, register_method
from .config import TFPoseConfig
from .decode import tfpose_results
from .loss import tfpose_losses
from .model import TFPose, build_tfpose
from .transform import tfpose_transform

__all__ = ["TFPoseConfig", "TFPose", "tfpose_losses", "tfpose_results", "tfpose_transform", "build_tfpose"]

register_method(MethodSpec(name="tfpose", config_cls=TFPoseConfig, build=build_tfpose, family="topdown",
                           transform=tfpose_transform))
