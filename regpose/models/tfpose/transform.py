"""TFPose's data pipeline: the top-down regression codec (:mod:`regpose.codecs.topdown_regression`; TFPose configs
crop, encode and decode with UDP, ``data.augment.topdown.udp``) plus the auxiliary UDP heatmaps when the auxiliary
loss is on (spec §6-7)."""
from __future__ import annotations

from ...codecs.topdown_regression import TopDownRegressionTransform, topdown_transform
from .config import check_data

__all__ = ["tfpose_transform"]


def tfpose_transform(cfg, train: bool) -> TopDownRegressionTransform:
    """TFPose's ``MethodSpec.transform``: crops, coordinate targets (x / (W - 1, H - 1) under UDP) and, in training
    with ``aux_heatmap`` and a positive ``aux_loss_weight``, heatmaps of sigma ``aux_sigma`` at a quarter of the
    input size."""
    check_data(cfg)
    m = cfg.model
    aux = m.aux_heatmap and m.aux_loss_weight > 0
    return topdown_transform(cfg, train, heatmap_sigma=float(m.aux_sigma) if aux else None)
