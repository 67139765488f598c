"""Backbones: one config (:class:`BackboneConfig`, the ``model.backbone`` section of every method) and one builder
(:func:`build_backbone`).

A backbone is a timm model in ``features_only`` mode: ``forward(x)`` returns the list of NCHW feature maps of
``out_indices`` (finest first), and ``.channels`` / ``.strides`` describe them. HRNet uses
``feature_location=''`` so the native branch outputs (strides 4-32, widths C, 2C, 4C, 8C) come out, as pose
methods use them; Swin comes wrapped as detectron2's Swin (:class:`SwinFeatures`). Our rewrites of timm
models are ``kwargs`` next to timm's own arguments:

- ``stem_width``: the width of a plain 7x7 ResNet stem (timm fixes it at 64; mmpose's ``stem_channels`` and
  detectron2's ``STEM_OUT_CHANNELS`` can differ, e.g. in the reduced reference models);
- ``head_level: true``: the deepest level is the 1x1 head convolution + BN + activation (``conv_head`` /
  ``bn2`` of timm's EfficientNet family), as mmcls' MobileNetV2 output index 7 (Poseur's MobileNetV2).

Building never reads a file: the trunk initialisation ``weights`` is loaded by :func:`init_trunks`, which
:func:`regpose.models.build_model` runs only when the trainer asks (``init_trunk=True``), never when a model is
built to receive a checkpoint (test / infer / export / convert / reference-check).
"""
from __future__ import annotations

import dataclasses
import difflib
import logging
import re
import types
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .weights import WEIGHT_SUFFIXES, LoadReport, fetch_trunk_state, load_partial, to_trunk_names

__all__ = ["BackboneConfig", "TimmBackbone", "SwinFeatures", "build_backbone", "init_trunks",
           "frozen_uninitialised"]

log = logging.getLogger(__name__)


@dataclass
class BackboneConfig:
    """The trunk of a model. ``weights`` is its initialisation for training (``none``, ``timm:<model>.<tag>``,
    an ``http(s)://`` / ``file://`` URL, or a local .pth / .pt / .pkl / .npz file; see
    :mod:`regpose.models.weights`). ``norm`` / ``freeze_at`` follow detectron2: ``frozen_bn`` turns every
    BatchNorm into a fixed affine from its running statistics; ``freeze_at`` k > 0 freezes the stem and the
    first k - 1 stages. Freezing a trunk that no file initialised is an error in training unless
    ``allow_random_frozen`` is set."""
    name: str = "resnet50"                       # timm model name
    weights: str = "none"
    norm: Literal["bn", "frozen_bn"] = "bn"
    freeze_at: int = 0
    kwargs: dict[str, Any] = field(default_factory=dict)    # extra timm arguments and our rewrites (module doc)
    allow_random_frozen: bool = False

    #: ``backbone: resnet50`` in a config sets the name only (the method's defaults keep the other fields).
    __shorthand__ = "name"
    #: keys of the former per-method vocabulary, named in the "unknown key" error.
    __former_keys__ = {"pretrained": "weights", "backbone_weights": "weights", "frozen_bn": "norm",
                       "backbone_norm": "norm", "backbone_kwargs": "kwargs"}

    def __post_init__(self):
        import timm

        if not timm.is_model(self.name):
            close = difflib.get_close_matches(self.name, timm.list_models(), n=3, cutoff=0.6)
            hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
            raise ConfigError(f"model.backbone.name: '{self.name}' is not a timm model{hint}")
        w = self.weights
        ok = (w == "none" or (w.startswith("timm:") and len(w) > 5) or re.match(r"^(https?|file)://.", w)
              or w.lower().endswith(WEIGHT_SUFFIXES))
        if not ok:
            raise ConfigError(f"model.backbone.weights: expected none, timm:<model>.<tag>, an http(s):// or file:// "
                              f"URL, or a {' / '.join(WEIGHT_SUFFIXES)} file, got {w!r}")
        if self.freeze_at < 0:
            raise ConfigError(f"model.backbone.freeze_at: expected >= 0, got {self.freeze_at}")


# ----------------------------------------------------------------------------------------------------------
# Rewrites of timm models
# ----------------------------------------------------------------------------------------------------------
def _is_plain_resnet(name: str, kwargs: dict) -> bool:
    return name.startswith(("resnet", "resnext", "test_resnet")) and not kwargs.get("stem_type")


def _rewrite_plain_stem(body: nn.Module, stem_width: int) -> None:
    """Replace a timm ResNet's 64-channel 7x7 stem by ``stem_width`` channels, and the first block of its first
    stage (which reads the stem) by the same block taking ``stem_width`` inputs."""
    first = body.layer1[0]
    bottleneck = hasattr(first, "conv3")
    out = (first.conv3 if bottleneck else first.conv2).out_channels
    planes = out // type(first).expansion
    kwargs = {}
    if bottleneck:                                 # keep the block's grouped width (ResNeXt, detectron2 widths)
        groups = first.conv2.groups
        kwargs = {"cardinality": groups, "base_width": first.conv1.out_channels * 64 // (planes * groups)}
    down = None if stem_width == out else nn.Sequential(nn.Conv2d(stem_width, out, 1, bias=False),
                                                        nn.BatchNorm2d(out))
    body.conv1 = nn.Conv2d(3, stem_width, kernel_size=7, stride=2, padding=3, bias=False)
    body.bn1 = nn.BatchNorm2d(stem_width)
    body.layer1[0] = type(first)(stem_width, planes, downsample=down, **kwargs)


def _attach_head_level(body: nn.Module, name: str, kwargs: dict) -> int:
    """Give an EfficientNet-family feature net its 1x1 head conv + BN-act (timm names ``conv_head`` / ``bn2``,
    so ImageNet weights load by name); returns the head's width."""
    import timm

    full = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    if not (hasattr(full, "conv_head") and hasattr(full, "bn2")):
        raise ConfigError(f"model.backbone.kwargs.head_level: {name} has no 1x1 head convolution (conv_head)")
    body.conv_head, body.bn2 = full.conv_head, full.bn2
    return full.conv_head.out_channels


# HighResolutionNetFeatures names its feature points after modules it does not have.
_HRNET_FEATURE_MODULES = {"stem": "act2", "stage1": "layer1"}


def _freeze_stages(body: nn.Module, freeze_at: int) -> None:
    """detectron2 FREEZE_AT: 1 = the stem, k = the stem and the first k - 1 stages (the modules up to the one
    producing timm feature k - 1); their parameters stop training."""
    info = body.feature_info.info                  # every feature point of the trunk, also those not output
    if freeze_at > len(info):
        raise ConfigError(f"model.backbone.freeze_at: expected 0..{len(info)} for this trunk, got {freeze_at}")
    point = info[freeze_at - 1]["module"]
    children = dict(body.named_children())
    last = next((c for c in (_HRNET_FEATURE_MODULES.get(point), point, point.replace(".", "_")) if c in children),
                None)
    if last is None:
        raise ConfigError(f"model.backbone.freeze_at: cannot find the stage '{point}' of this trunk")
    for name, child in children.items():
        child.requires_grad_(False)
        if name == last:
            return


def _set_norm_and_freeze(body: nn.Module, cfg: BackboneConfig) -> nn.Module:
    if cfg.norm == "frozen_bn":
        from timm.layers import freeze_batch_norm_2d

        body = freeze_batch_norm_2d(body)          # detectron2 FrozenBN: fixed affine from the running stats
    if cfg.freeze_at > 0:
        _freeze_stages(body, cfg.freeze_at)
    return body


# ----------------------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------------------
class TimmBackbone(nn.Module):
    """``timm.create_model(cfg.name, features_only=True, out_indices=...)`` returning a list of feature maps.

    out_indices index timm's feature list (ResNet: 0 = stem stride 2, 1..4 = C2..C5; HRNet with
    feature_location='': 0 = stem, 1..4 = branches at strides 4..32). ``initialised`` holds the names (in
    ``body``) that :meth:`load_initial_weights` loaded from a file.
    """

    def __init__(self, cfg: BackboneConfig, out_indices=(1, 2, 3, 4)):
        super().__init__()
        import timm

        self.cfg = cfg
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.kwargs.items()}
        stem_width = kwargs.pop("stem_width", None)
        head_level = bool(kwargs.pop("head_level", False))
        if cfg.name.startswith("hrnet"):
            kwargs.setdefault("feature_location", "")
        rewrite_stem = stem_width is not None and _is_plain_resnet(cfg.name, kwargs)
        if stem_width is not None and not rewrite_stem:
            kwargs["stem_width"] = stem_width
        try:
            self.body = timm.create_model(cfg.name, pretrained=False, features_only=True,
                                          out_indices=tuple(out_indices), **kwargs)
        except TypeError as e:
            raise ConfigError(f"model.backbone.kwargs: timm's {cfg.name} does not accept them ({e})") from None
        self.channels = list(self.body.feature_info.channels())
        self.strides = list(self.body.feature_info.reduction())
        if rewrite_stem and int(stem_width) != 64:
            _rewrite_plain_stem(self.body, int(stem_width))
            self.channels = [int(stem_width) if i == 0 else c for i, c in zip(out_indices, self.channels)]
        self.head_level = head_level
        if head_level:
            if max(out_indices) != len(self.body.feature_info.info) - 1:
                raise ConfigError("model.backbone.kwargs.head_level: the deepest feature level must be output")
            kwargs.pop("feature_location", None)
            self.channels[-1] = _attach_head_level(self.body, cfg.name, kwargs)
        self.body = _set_norm_and_freeze(self.body, cfg)
        self.initialised: set[str] = set()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = list(self.body(x))
        if self.head_level:
            feats[-1] = self.body.bn2(self.body.conv_head(feats[-1]))
        return feats

    def load_initial_weights(self) -> LoadReport | None:
        """Load ``cfg.weights`` into the trunk (what fits; see :func:`regpose.models.weights.load_partial`)."""
        if self.cfg.weights == "none":
            return None
        raw = fetch_trunk_state(self.cfg.weights)
        state = to_trunk_names(raw, self.body.state_dict())
        report = load_partial(self.body, state, f"model.backbone.weights={self.cfg.weights}", file_keys=list(raw))
        self.initialised = set(report.loaded)
        return report


def _swin_det_attn(self, x: torch.Tensor) -> torch.Tensor:
    """Shifted-window attention in the order of the official Swin-for-detection code (and QueryPose's):
    pad to a multiple of the window *then* roll (timm rolls then pads, which differs when the map is not a
    multiple of the window size)."""
    from timm.models.swin_transformer import window_partition, window_reverse

    b, h, w, c = x.shape
    ws, ss = self.window_size, self.shift_size
    x = F.pad(x, (0, 0, 0, (ws[1] - w % ws[1]) % ws[1], 0, (ws[0] - h % ws[0]) % ws[0]))
    hp, wp = x.shape[1], x.shape[2]
    shifted = any(ss)
    if shifted:
        x = torch.roll(x, shifts=(-ss[0], -ss[1]), dims=(1, 2))
    mask = self.get_attn_mask(x) if shifted else None
    windows = window_partition(x, ws).view(-1, self.window_area, c)
    windows = self.attn(windows, mask=mask).view(-1, ws[0], ws[1], c)
    x = window_reverse(windows, ws, hp, wp)
    if shifted:
        x = torch.roll(x, shifts=ss, dims=(1, 2))
    return x[:, :h, :w].contiguous()


class SwinFeatures(nn.Module):
    """timm Swin (features_only, NHWC) as detectron2's Swin backbone: NCHW maps with one LayerNorm per output
    (official ``norm0..3``), shifted windows in every odd block of every stage (``always_partition``) and the
    official pad-then-roll order (:func:`_swin_det_attn`). out_indices 0..3 are strides 4..32."""

    def __init__(self, cfg: BackboneConfig, out_indices=(0, 1, 2, 3)):
        from timm.models.swin_transformer import SwinTransformerBlock

        super().__init__()
        kwargs = {"strict_img_size": False, "always_partition": True, **cfg.kwargs}
        self.body = TimmBackbone(dataclasses.replace(cfg, kwargs=kwargs), out_indices)
        for m in self.body.modules():
            if isinstance(m, SwinTransformerBlock):
                m._attn = types.MethodType(_swin_det_attn, m)
        self.channels, self.strides = self.body.channels, self.body.strides
        self.norms = nn.ModuleList(nn.LayerNorm(c) for c in self.channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [norm(f).permute(0, 3, 1, 2).contiguous() for norm, f in zip(self.norms, self.body(x))]


def build_backbone(cfg: BackboneConfig, out_indices) -> TimmBackbone | SwinFeatures:
    """The trunk ``cfg`` describes, returning the maps of timm feature indices ``out_indices`` (random
    initialisation; :func:`init_trunks` loads ``cfg.weights``)."""
    if cfg.name.startswith("swin"):
        return SwinFeatures(cfg, tuple(out_indices))
    return TimmBackbone(cfg, tuple(out_indices))


# ----------------------------------------------------------------------------------------------------------
# Initialisation for training
# ----------------------------------------------------------------------------------------------------------
def _trunks(model: nn.Module) -> list[tuple[str, TimmBackbone]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, TimmBackbone)]


def init_trunks(model: nn.Module) -> dict[str, LoadReport | None]:
    """Load every trunk's ``weights`` (training only), logging what was loaded, left at init and ignored;
    returns the report of each trunk by module name (None: ``weights: none``)."""
    reports = {}
    for name, trunk in _trunks(model):
        reports[name] = report = trunk.load_initial_weights()
        if report is None:
            log.info("%s: model.backbone.weights=none, the %s trunk trains from its random initialisation",
                     name, trunk.cfg.name)
        else:
            log.info("%s: %s", name, report.summary())
    return reports


def frozen_uninitialised(model: nn.Module, loaded: set[str] = frozenset()) -> list[str]:
    """Names of frozen trunk tensors (parameters that do not train, FrozenBatchNorm statistics) that no file
    initialised: neither the trunk's ``weights`` nor the full-model names in ``loaded`` (``train.init_weights``).
    Training them is training nothing: they keep their random values forever."""
    from timm.layers import FrozenBatchNormAct2d
    from torchvision.ops.misc import FrozenBatchNorm2d       # what timm's freeze_batch_norm_2d creates

    out = []
    for prefix, trunk in _trunks(model):
        if trunk.cfg.allow_random_frozen:
            continue
        frozen = {n for n, p in trunk.body.named_parameters() if not p.requires_grad}
        for mod_name, mod in trunk.body.named_modules():
            if isinstance(mod, (FrozenBatchNorm2d, FrozenBatchNormAct2d)):
                frozen |= {f"{mod_name}.{b}" for b, _ in mod.named_buffers(recurse=False)}
        out += [f"{prefix}.body.{n}" for n in sorted(frozen)
                if n not in trunk.initialised and f"{prefix}.body.{n}" not in loaded]
    return out
