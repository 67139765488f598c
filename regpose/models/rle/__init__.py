"""RLE regression baseline (Li et al., "Human Pose Regression with Residual Log-likelihood Estimation", ICCV 2021).

Top-down: backbone -> global average pooling -> FC (coordinates, "linear with norm") and FC (sigma) -> RLE loss with a
RealNVP flow. The head, the flip test, the keypoint scores, the decoding to people and the data transform are the
top-down regression pieces it shares with Poseur (:mod:`regpose.models.topdown_regression`); here:

  config.py  RLEConfig (the knobs)
  model.py   RLERegression (the network), build_rle
  loss.py    rle_regression_loss
"""
from __future__ import annotations

from ..registry import MethodSpec, register_method
from ..topdown_regression import topdown_regression_transform
from .config import RLEConfig
from .loss import rle_regression_loss
from .model import RLERegression, build_rle

__all__ = ["RLEConfig", "RLERegression", "rle_regression_loss", "build_rle"]

register_method(MethodSpec(name="rle", config_cls=RLEConfig, build=build_rle, family="topdown",
                           transform=topdown_regression_transform))
