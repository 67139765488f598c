"""DirectPose's data pipeline: the one-stage codec (:mod:`regpose.codecs.onestage`) with torchvision's pixel
normalisation; DirectPose has a multi-scale test (``test.scales``, :func:`.decode.predict`)."""
from __future__ import annotations

from ...codecs.onestage import OneStageTransform, onestage_transform

__all__ = ["directpose_transform", "MULTI_SCALE"]

MULTI_SCALE = True


def directpose_transform(cfg, train: bool) -> OneStageTransform:
    """The one-stage data pipeline plus its box-relative targets; images ``(x / 255 - mean) / std``."""
    return onestage_transform(cfg, train, pixel_range=1, multi_scale=MULTI_SCALE)
