"""QueryPose's data pipeline: the one-stage codec (:mod:`regpose.codecs.onestage`) with detectron2's pixel
normalisation on 0..255 values (the official order of operations); one scale only (the official code has no
multi-scale test)."""
from __future__ import annotations

from ...codecs.onestage import OneStageTransform, onestage_transform

__all__ = ["querypose_transform", "MULTI_SCALE"]

MULTI_SCALE = False


def querypose_transform(cfg, train: bool) -> OneStageTransform:
    """The one-stage data pipeline plus its box-relative targets; images ``(x - mean) / std`` on 0..255."""
    return onestage_transform(cfg, train, pixel_range=255, multi_scale=MULTI_SCALE)
