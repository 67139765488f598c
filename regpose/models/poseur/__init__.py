"""Poseur: direct human pose regression with transformers (Mao et al., ECCV 2022).

Top-down, one person crop per sample: backbone + neck -> coarse RLE proposal -> keypoint encoder -> query decoder
(EMSDA cross-attention) refining the keypoints layer by layer, each with a sigma. Training: RLE loss (paper Eq. 2-4) on
the coarse head and every decoder layer, with 3 noisy query groups. Inference: last layer's coordinates, keypoint score
from sigma, optional flip test with the official fusions.

  config.py  PoseurConfig (the paper's knobs)
  model.py   Poseur (the network), build_poseur
  loss.py    poseur_losses (RLE on the coarse head and every decoder layer)
  decoding to people, flip test, data transform: ../topdown_regression.py (shared with the RLE baseline)
  official checkpoints: regpose/compat/poseur.py

Where the official code (aim-uofa/Poseur) differs from the paper text we follow the code (its checkpoints depend
on it); each place is marked ``# Official code:``. The spec with every detail is ../shared/reference/poseur/spec.md.
"""
from __future__ import annotations

from ..registry import MethodSpec, register_method
from ..topdown_regression import topdown_regression_transform
from .config import PoseurConfig
from .loss import poseur_losses
from .model import Poseur, build_poseur

__all__ = ["PoseurConfig", "Poseur", "poseur_losses", "build_poseur"]

register_method(MethodSpec(name="poseur", config_cls=PoseurConfig, build=build_poseur, family="topdown",
                           transform=topdown_regression_transform,
                           converter="regpose.compat.poseur"))
