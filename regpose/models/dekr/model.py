"""The DEKR network: HRNet trunk with its four branches upsampled and concatenated, the heatmap head (K keypoints +
person center) and the disentangled offset head (one adaptive-conv branch per keypoint); and its builder."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import timm.models.hrnet as timm_hrnet
import torch
import torch.nn.functional as F
from timm.models.resnet import BasicBlock
from torch import nn

from ...codecs.heatmap_offset import map_poses
from ...codecs.multiscale import resolve_test_scales
from ...data.keypoints import KeypointMeta
from ...errors import ConfigError
from ...structures import PoseResult
from ..backbones import BackboneConfig, build_backbone
from ..base import PoseModel
from ..layers.adaptive_conv import AdaptiveConv2d, AdaptiveImpl
from ..layers.init import heatmap_head_init_
from .config import DEKRConfig, eval_input_size
from .decode import BatchedScaleOne, flip_input, poses_to_result, run_pipeline
from .loss import heatmap_loss, offset_loss
from .rescore import PoseRescorer
from .transform import MULTI_SCALE

__all__ = ["DEKR", "build_dekr", "HRNetConcat", "HeatmapHead", "AdaptBlock", "OffsetHead"]


def _per_branch(values: list, stage: int, what: str) -> tuple[int, ...]:
    """Stage ``stage`` (0-2: HRNet stages 2-4, with stage + 2 branches) of a per-stage setting given as one int for
    every branch or one value per branch (the official code accepts different block counts / widths per branch)."""
    branches = stage + 2
    v = values[stage]
    out = (int(v),) * branches if isinstance(v, int) else tuple(int(x) for x in v)
    if len(out) != branches:
        raise ConfigError(f"model.{what}[{stage}]: stage {stage + 2} has {branches} branches, got {v}")
    return out


def _stage_channels(channels: list, stage: int) -> tuple[int, ...]:
    """Widths of stage ``stage`` from ``hrnet_channels``: the first stage + 2 of 4 widths, or that stage's own list.
    Official code: a transition that changes an existing branch's width convolves the previous stage's *last*
    branch, so only that branch may change width (otherwise the official network fails in its first forward)."""
    if any(isinstance(c, list) for c in channels):
        if len(channels) != 3:
            raise ConfigError(f"model.hrnet_channels: expected one list of widths per stage 2-4, got {channels}")
        cur = _per_branch(channels, stage, "hrnet_channels")
        if stage:
            prev = _per_branch(channels, stage - 1, "hrnet_channels")
            if cur[:stage] != prev[:stage]:
                raise ConfigError(f"model.hrnet_channels[{stage}]: {list(cur)} changes the width of a branch before "
                                  f"the last of {list(prev)}; the official transition cannot (it reads the last)")
        return cur
    if len(channels) != 4:
        raise ConfigError(f"model.hrnet_channels: expected 4 branch widths, got {channels}")
    return tuple(int(c) for c in channels[:stage + 2])


class HRNetConcat(nn.Module):
    """HRNet trunk (timm, ``feature_location=''``) whose four branch outputs (strides 4-32) are bilinearly
    upsampled (align_corners=False) to stride 4 and concatenated: the representation both DEKR heads read.
    timm's HRNet has the official structure and key names, including the official transition (a changed width of
    an existing branch is converted from the previous stage's last branch), so every BASIC-block official
    ``STAGES`` spec builds the same network: per-branch widths and block counts included."""

    def __init__(self, backbone: BackboneConfig, channels: list | None = None, modules: list[int] | None = None,
                 blocks: list | None = None, layer1_blocks: int = 0, layer1_planes: int = 0):
        super().__init__()
        kwargs = {}
        base = timm_hrnet.cfg_cls[backbone.name]
        if layer1_blocks or layer1_planes:
            stage = dict(base["stage1"])
            stage["num_blocks"] = (int(layer1_blocks or stage["num_blocks"][0]),)
            stage["num_channels"] = (int(layer1_planes or stage["num_channels"][0]),)
            kwargs["stage1"] = stage
        if channels or modules or blocks:
            for s in range(3):                     # stages 2, 3, 4 have 2, 3, 4 branches
                stage = dict(base[f"stage{s + 2}"])
                if channels:
                    stage["num_channels"] = _stage_channels(channels, s)
                if modules:
                    stage["num_modules"] = int(modules[s])
                if blocks:
                    stage["num_blocks"] = _per_branch(blocks, s, "hrnet_blocks")
                kwargs[f"stage{s + 2}"] = stage
        self.hrnet = build_backbone(dataclasses.replace(backbone, kwargs={**kwargs, **backbone.kwargs}), (1, 2, 3, 4))
        self.out_channels = sum(self.hrnet.channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.hrnet(x)                                   # [(N, C_i, H/2^(i+2), W/2^(i+2))] i = 0..3
        size = feats[0].shape[-2:]
        ups = [feats[0]] + [F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in feats[1:]]
        return torch.cat(ups, dim=1)                           # (N, sum C_i, H/4, W/4)


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class HeatmapHead(nn.Module):
    """1x1 transition -> BasicBlocks -> conv with bias to K keypoint heatmaps + 1 person-center heatmap (linear)."""

    def __init__(self, in_channels: int, channels: int, num_keypoints: int, num_blocks: int = 1, dilation: int = 1,
                 final_kernel: int = 1):
        super().__init__()
        self.transition = _conv_bn_relu(in_channels, channels)
        self.blocks = nn.Sequential(*[BasicBlock(channels, channels, dilation=dilation) for _ in range(num_blocks)])
        self.final = nn.Conv2d(channels, num_keypoints + 1, final_kernel, padding=1 if final_kernel == 3 else 0)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.final(self.blocks(self.transition(features)))   # (N, K+1, H/4, W/4)


class AdaptBlock(nn.Module):
    """Residual adaptive-conv block of every keypoint branch: ReLU(BN(adaptive_conv(x)) + x) (paper Fig. 3).
    ``adaptive=False`` is the paper's ablation with a regular 3x3 convolution in its place."""

    def __init__(self, channels: int, groups: int, impl: AdaptiveImpl = "auto", adaptive: bool = True):
        super().__init__()
        self.adapt_conv = AdaptiveConv2d(channels, groups, impl) if adaptive else \
            nn.Conv2d(groups * channels, groups * channels, 3, padding=1, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(groups * channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.adapt_conv(x)) + x)


class OffsetHead(nn.Module):
    """Disentangled offset regression (paper Sec. 3.2): a 1x1 transition to K*P channels, split into K branches of P
    channels, each with its own adaptive blocks and its own 1x1 regressor to (dx, dy). The K branches are executed
    together as grouped convolutions (group j = keypoint j), which equals the official per-branch modules.
    Ablations (paper Sec. 4): ``multi_branch=False`` regresses all keypoints from one shared K*P-channel branch;
    ``adaptive=False`` uses regular convolutions."""

    def __init__(self, in_channels: int, num_keypoints: int, channels_per_keypoint: int = 15, num_blocks: int = 2,
                 final_kernel: int = 1, impl: AdaptiveImpl = "auto", multi_branch: bool = True, adaptive: bool = True):
        super().__init__()
        k, p = num_keypoints, channels_per_keypoint
        self.num_keypoints, self.channels_per_keypoint = k, p
        g = k if multi_branch else 1                       # branches
        self.transition = _conv_bn_relu(in_channels, k * p)
        self.blocks = nn.Sequential(*[AdaptBlock(k * p // g, g, impl, adaptive) for _ in range(num_blocks)])
        self.final = nn.Conv2d(k * p, 2 * k, final_kernel, padding=1 if final_kernel == 3 else 0, groups=g)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.final(self.blocks(self.transition(features)))   # (N, 2K, H/4, W/4): (dx_j, dy_j) = pixel - kpt


class DEKR(PoseModel):
    """HRNet + heatmap head + disentangled offset head; ``predict`` runs the official inference pipeline.

    ``adaptive_conv_impl`` (runtime option, same outputs): how the adaptive convolutions run
    (:func:`~regpose.models.layers.adaptive_conv.adaptive_conv2d`; ``auto``: grid_sample on CPU, deform_conv2d on
    CUDA)."""

    size_divisibility = 32
    output_names = ("heatmap", "offset")     # eval forward: (N, K+1, H/4, W/4) incl. centre, (N, 2K, H/4, W/4)

    def __init__(self, cfg: DEKRConfig, keypoints: KeypointMeta, input_size: int = 512, *,
                 adaptive_conv_impl: AdaptiveImpl = "auto"):
        super().__init__()
        self.cfg = cfg
        self.set_keypoints(keypoints)
        num_keypoints = self.num_keypoints
        self.flip_index = [int(i) for i in keypoints.flip_index]
        self.input_size = input_size
        self.backbone = HRNetConcat(cfg.backbone, cfg.hrnet_channels, cfg.hrnet_modules, cfg.hrnet_blocks,
                                    layer1_blocks=cfg.hrnet_layer1_blocks, layer1_planes=cfg.hrnet_layer1_planes)
        c = self.backbone.out_channels
        self.heatmap_head = HeatmapHead(c, cfg.head_heatmap_channels, num_keypoints, cfg.head_heatmap_blocks,
                                        cfg.head_heatmap_dilation, cfg.final_conv_kernel)
        self.offset_head = OffsetHead(c, num_keypoints, cfg.offset_channels_per_keypoint, cfg.offset_blocks,
                                      cfg.final_conv_kernel, adaptive_conv_impl, cfg.multi_branch,
                                      cfg.adaptive_conv)
        self.init_weights()
        self.rescorer = PoseRescorer.from_file(cfg.rescore_weights) if cfg.rescore_weights else None

    def init_weights(self) -> None:
        """Official init of the heads: every conv N(0, 0.001^2) with zero bias, BN (1, 0); the affine / translation
        convs of the adaptive blocks all zeros; the adaptive kernels torchvision's kaiming-uniform(a=sqrt 5).
        Official code applies the same N(0, 0.001^2) to the backbone and then overwrites it from ImageNet weights;
        without ImageNet weights we keep timm's kaiming init there (the official init assumes a pretrained trunk)."""
        for head in (self.heatmap_head, self.offset_head):
            heatmap_head_init_(head)
            for m in head.modules():
                if isinstance(m, AdaptiveConv2d):
                    m.reset_parameters()

    # -- network -------------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, targets: list[dict] | None = None):
        features = self.backbone(images)                 # (N, C, H/4, W/4)
        heatmap = self.heatmap_head(features)            # (N, K+1, H/4, W/4)
        offset = self.offset_head(features)              # (N, 2K, H/4, W/4)
        if targets is None or not self.training:
            return heatmap, offset
        return self.losses(heatmap, offset, targets)

    def losses(self, heatmap: torch.Tensor, offset: torch.Tensor, targets: list[dict]) -> dict[str, torch.Tensor]:
        """L = HEATMAPS_LOSS_FACTOR * L_hm + OFFSETS_LOSS_FACTOR * L_off (paper Eq. 4-5, official factors 1, 0.03)."""
        t = {k: torch.stack([tg[k] for tg in targets]).to(heatmap.device)
             for k in ("heatmap", "heatmap_weight", "offset", "offset_weight")}
        l_hm = heatmap_loss(heatmap, t["heatmap"], t["heatmap_weight"])
        weight = t["offset_weight"] if self.cfg.offset_loss_normalization else (t["offset_weight"] > 0).float()
        l_off = offset_loss(offset, t["offset"], weight)
        return {"loss_heatmap": self.cfg.heatmap_loss_factor * l_hm,
                "loss_offset": self.cfg.offset_loss_factor * l_off}

    # -- inference -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, batch: dict, test_cfg) -> list[PoseResult]:
        """Official per-image inference for each sample: flip / multi-scale per ``test_cfg``, center NMS, pose NMS,
        optional heatmap matching, mapping to original pixels with ``meta['inverse']``, optional rescoring.

        The scale-1 input is the batch image (the eval transform applied the official resize); other scales are
        resized from ``meta['image_raw']``, which is dropped from the meta afterwards (it is large). When every image
        of the batch has the padded size (no padding), the scale-1 network pass runs once for the whole batch."""
        images, metas = batch["images"], batch["metas"]
        scales = resolve_test_scales(test_cfg, "dekr", MULTI_SCALE)
        n = len(metas)
        shared = None
        if n > 1 and all(tuple(m["input_hw"]) == tuple(images.shape[-2:]) for m in metas):
            inp = torch.cat([images, flip_input(images)]) if test_cfg.flip else images
            shared = self(inp)                                       # (2N or N, ...) heatmaps, offsets
        results = []
        for i, meta in enumerate(metas):
            h, w = meta["input_hw"]
            raw = meta.pop("image_raw", None)
            net = self if shared is None else BatchedScaleOne(self, shared, i, n, test_cfg.flip, (h, w))
            poses, scores = run_pipeline(net, raw, self.cfg, self.flip_index, self.input_size, test_cfg.flip,
                                         scales, base_input=images[i:i + 1, :, :h, :w],
                                         device=images.device)
            results.append(self.to_result(poses, scores, meta["inverse"]))
        return results

    def to_result(self, poses: np.ndarray, scores: np.ndarray, inverse: np.ndarray) -> PoseResult:
        """Base-image poses -> original pixels (official ``get_final_preds``), then rescoring if a net is loaded."""
        final = map_poses(poses, inverse)
        if self.rescorer is not None:
            scores = self.rescorer(final, scores, self.keypoints)
        return poses_to_result(final, scores)

    def load_rescore_net(self, source) -> None:
        """Use a rescoring net (file path or state dict, official key names ``l1/l2/l3``)."""
        self.rescorer = PoseRescorer.from_file(source) if isinstance(source, (str, Path)) else \
            PoseRescorer.from_state_dict(source)


def build_dekr(cfg, keypoints: KeypointMeta) -> DEKR:
    """Build from a full :class:`regpose.config.Config` for the keypoint layout ``keypoints``: the official test
    resize's input size, the adaptive-conv implementation from ``runtime``."""
    return DEKR(cfg.model, keypoints, eval_input_size(cfg),
                adaptive_conv_impl=cfg.runtime.adaptive_conv_impl)
