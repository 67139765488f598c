"""Backbones from timm (``features_only``) with optional local pretrained weights.

Weights are never downloaded: ``pretrained`` is an optional file path (a timm / torchvision / official state
dict). HRNet uses ``feature_location=''`` so the native branch outputs (strides 4-32, widths C, 2C, 4C, 8C)
come out, as pose methods use them.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["TimmBackbone", "build_timm_backbone", "load_backbone_weights"]


class TimmBackbone(nn.Module):
    """``timm.create_model(name, features_only=True)`` returning a list of feature maps.

    out_indices index timm's feature list (ResNet: 0 = stem stride 2, 1..4 = C2..C5; HRNet with
    feature_location='': 0 = stem, 1..4 = branches at strides 4..32).
    """

    def __init__(self, name: str, out_indices: tuple[int, ...] = (1, 2, 3, 4), pretrained: str = "",
                 **timm_kwargs):
        super().__init__()
        import timm

        if name.startswith("hrnet") and "feature_location" not in timm_kwargs:
            timm_kwargs["feature_location"] = ""
        self.body = timm.create_model(name, pretrained=False, features_only=True, out_indices=tuple(out_indices),
                                      **timm_kwargs)
        self.channels = list(self.body.feature_info.channels())
        self.strides = list(self.body.feature_info.reduction())
        if pretrained:
            load_backbone_weights(self.body, pretrained)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.body(x))


def build_timm_backbone(name: str, out_indices=(1, 2, 3, 4), pretrained: str = "", **kw) -> TimmBackbone:
    return TimmBackbone(name, tuple(out_indices), pretrained, **kw)


def load_backbone_weights(module: nn.Module, path: str) -> None:
    """Load a local state dict into a backbone, ignoring classifier heads; report what did not fit."""
    from ..engine.checkpoint import load_state_dict_file

    state = load_state_dict_file(path)
    own = module.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in usable and not k.endswith("num_batches_tracked")]
    if missing:
        from ..errors import CheckpointError
        raise CheckpointError(f"{path}: backbone weights miss {len(missing)} keys, e.g. {missing[:3]}")
    module.load_state_dict(usable, strict=False)
