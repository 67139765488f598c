"""DEKR: bottom-up human pose estimation via disentangled keypoint regression (Geng et al., CVPR 2021).

One network predicts, at stride 4, K keypoint heatmaps + a person-center heatmap, and for every pixel the 2-D
offsets from that pixel to each of the K keypoints of the person centred there. The offset branch is split into K
branches, each with its own adaptive convolutions (:mod:`regpose.models.layers.adaptive_conv`), so each keypoint
learns its own representation ("disentangled"). People are read off the center heatmap (NMS, top-k), their poses are
the regressed offsets at the center, scored by the keypoint heatmaps, de-duplicated by pose NMS and optionally
rescored by a small OKS-predicting net.

Everything follows the official code (HRNet/DEKR @ 7a30313; ``../shared/reference/dekr/spec.md``), including its
quirks, so converted official checkpoints reproduce the official outputs; those places say ``Official code:``.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..structures import PoseResult
from .backbones import BackboneConfig, build_backbone
from .base import PoseModel
from .layers.adaptive_conv import AdaptiveConv2d
from .layers.distributed import global_normalizer
from .registry import MethodSpec, register_method

__all__ = [
    "DEKRConfig", "DEKR", "build_dekr", "dekr_transform", "train_rescore",
    "HeatmapHead", "OffsetHead", "AdaptBlock", "HRNetConcat", "PredictOKSNet", "PoseRescorer",
    "heatmap_loss", "offset_loss", "official_test_resize", "resize_for_test", "normalize_image", "flip_input",
    "offset_to_pose", "up_interpolate", "center_proposals", "pose_nms", "match_pose_to_heatmap", "run_pipeline",
    "rescore_features", "RESCORE_LINKS", "eval_sample", "map_poses", "keypoint_layout",
]


# ----------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------
@dataclass
class DEKRConfig:
    """DEKR's knobs, defaults = the official W32 COCO model (official config names in comments)."""
    # backbone: timm HRNet (its structure and key names equal the official trunk); overrides for other sizes.
    # name: MODEL.SPEC.STAGES via the timm variant (hrnet_w32 / hrnet_w48); weights: MODEL.PRETRAINED
    backbone: BackboneConfig = field(default_factory=lambda: BackboneConfig("hrnet_w32"))
    # branch widths: the 4 of the last stage (earlier stages use its first 2 and 3), or one list per stage 2-4 as
    # the official STAGES.NUM_CHANNELS; [] = the timm variant's
    hrnet_channels: list[int | list[int]] = field(default_factory=list)
    hrnet_modules: list[int] = field(default_factory=list)    # modules of stages 2-4 (NUM_MODULES); [] = [1, 4, 3]
    # BasicBlocks per branch of stages 2-4 (STAGES.NUM_BLOCKS): one count per stage, or a list per stage with one
    # count per branch (e.g. [[2, 1], [1, 1, 1], [1, 1, 1, 1]]); [] = [4, 4, 4]
    hrnet_blocks: list[int | list[int]] = field(default_factory=list)
    hrnet_layer1_blocks: int = 0                 # Bottlenecks in layer1; 0 = official 4 (small CPU models: fewer)
    hrnet_layer1_planes: int = 0                 # their planes (x4 out); 0 = official 64
    # heads
    head_heatmap_channels: int = 32              # HEAD_HEATMAP.NUM_CHANNELS (W48: 48)
    head_heatmap_blocks: int = 1                 # HEAD_HEATMAP.NUM_BLOCKS
    head_heatmap_dilation: int = 1               # HEAD_HEATMAP.DILATION_RATE
    offset_channels_per_keypoint: int = 15       # HEAD_OFFSET.NUM_CHANNELS_PERKPT
    offset_blocks: int = 2                       # HEAD_OFFSET.NUM_BLOCKS (adaptive blocks per keypoint branch)
    final_conv_kernel: int = 1                   # MODEL.SPEC.FINAL_CONV_KERNEL
    adaptive_conv_impl: Literal["auto", "grid_sample", "deform_conv2d"] = "auto"   # auto: CPU grid_sample, CUDA deform
    # paper ablations (Sec. 4.3), all on in the paper's best setting
    adaptive_conv: bool = True                   # adaptive convolutions in the offset branches (off: regular 3x3)
    multi_branch: bool = True                    # one branch per keypoint (off: a single shared regression branch)
    offset_loss_normalization: bool = True       # offset loss weighted by 1/sqrt(person area) (off: weight 1)
    # targets and losses (DATASET.SIGMA, CENTER_SIGMA, BG_WEIGHT, OFFSET_RADIUS; LOSS.*_FACTOR)
    sigma: float = 2.0
    center_sigma: float = 4.0                    # Official code: only channel index >= 17 uses it (CrowdPose: SIGMA)
    bg_weight: float = 0.1
    offset_radius: int = 4
    heatmap_loss_factor: float = 1.0
    offset_loss_factor: float = 0.03
    # augmentation: the bottom-up section of the data config (cfg.data.augment.bottomup), DEKR's official values
    # test (TEST.*; flip and scales are cfg.test.flip / cfg.test.scales)
    test_input_size: int = 0                     # DATASET.INPUT_SIZE for the resize policy; 0 = min(data.input_size)
    max_num_people: int = 30                     # DATASET.MAX_NUM_PEOPLE
    keypoint_threshold: float = 0.01             # TEST.KEYPOINT_THRESHOLD (center score)
    pool_threshold1: int = 300                   # TEST.POOL_THRESHOLD1 (7x7 center NMS above this map size)
    pool_threshold2: int = 200                   # TEST.POOL_THRESHOLD2 (5x5 above this, else 3x3)
    nms_threshold: float = 0.05                  # TEST.NMS_THRE (multi-scale: 0.15)
    nms_num_threshold: int = 8                   # TEST.NMS_NUM_THRE (CrowdPose: 7)
    decrease: float = 0.9                        # TEST.DECREASE (CrowdPose: 0.8)
    match_hmp: bool = False                      # TEST.MATCH_HMP: snap to heatmap peaks + Gaussian refinement
    adjust_threshold: float = 0.05               # TEST.ADJUST_THRESHOLD
    max_absorb_distance: float = 75.0            # TEST.MAX_ABSORB_DISTANCE
    gaussian_kernel: int = 6                     # TEST.GUASSIAN_KERNEL
    # rescoring net (RESCORE.*): applied when weights are given
    rescore_weights: str = ""                    # RESCORE.MODEL_FILE ('' = no rescoring)
    rescore_hidden: int = 256                    # RESCORE.HIDDEN_LAYER


# ----------------------------------------------------------------------------------------------------------
# Keypoint layouts DEKR needs: flip permutation and the rescoring net's limb links
# ----------------------------------------------------------------------------------------------------------
def keypoint_layout(fmt: str) -> tuple[int, list[int]]:
    """(number of keypoints, left/right flip permutation) of a dataset format (from :mod:`regpose.data.keypoints`)."""
    from ..data.keypoints import get_meta

    meta = get_meta(fmt)
    return meta.num_keypoints, [int(i) for i in meta.flip_index]


#: Limb links of the rescoring features (official ``get_feature``). Official code: CrowdPose's "torso" normaliser
#: (links 9 and 11) is lhip-lknee and lknee-lankle.
RESCORE_LINKS = {
    17: [(0, 1), (0, 2), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 6), (5, 7), (5, 11), (6, 8), (6, 12), (7, 9),
         (8, 10), (11, 12), (11, 13), (12, 14), (13, 15), (14, 16)],
    14: [(12, 13), (13, 0), (13, 1), (0, 2), (1, 3), (2, 4), (3, 5), (0, 6), (1, 7), (6, 8), (7, 9), (8, 10),
         (9, 11), (6, 7), (0, 1)],
}


# ----------------------------------------------------------------------------------------------------------
# Network
# ----------------------------------------------------------------------------------------------------------
def _per_branch(values: list, stage: int, what: str) -> tuple[int, ...]:
    """Stage ``stage`` (0-2: HRNet stages 2-4, with stage + 2 branches) of a per-stage setting given as one int for
    every branch or one value per branch (the official code accepts different block counts / widths per branch)."""
    from ..config import ConfigError

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
    from ..config import ConfigError

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
        import timm.models.hrnet as timm_hrnet

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
        from timm.models.resnet import BasicBlock

        self.transition = _conv_bn_relu(in_channels, channels)
        self.blocks = nn.Sequential(*[BasicBlock(channels, channels, dilation=dilation) for _ in range(num_blocks)])
        self.final = nn.Conv2d(channels, num_keypoints + 1, final_kernel, padding=1 if final_kernel == 3 else 0)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.final(self.blocks(self.transition(features)))   # (N, K+1, H/4, W/4)


class AdaptBlock(nn.Module):
    """Residual adaptive-conv block of every keypoint branch: ReLU(BN(adaptive_conv(x)) + x) (paper Fig. 3).
    ``adaptive=False`` is the paper's ablation with a regular 3x3 convolution in its place."""

    def __init__(self, channels: int, groups: int, impl: str = "auto", adaptive: bool = True):
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
                 final_kernel: int = 1, impl: str = "auto", multi_branch: bool = True, adaptive: bool = True):
        super().__init__()
        k, p = num_keypoints, channels_per_keypoint
        self.num_keypoints, self.channels_per_keypoint = k, p
        g = k if multi_branch else 1                       # branches
        self.transition = _conv_bn_relu(in_channels, k * p)
        self.blocks = nn.Sequential(*[AdaptBlock(k * p // g, g, impl, adaptive) for _ in range(num_blocks)])
        self.final = nn.Conv2d(k * p, 2 * k, final_kernel, padding=1 if final_kernel == 3 else 0, groups=g)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.final(self.blocks(self.transition(features)))   # (N, 2K, H/4, W/4): (dx_j, dy_j) = pixel - kpt


class _BatchedScaleOne:
    """Network callable for one image of a batch whose scale-1 outputs were computed for the whole batch: returns
    image i's rows (plain, flipped) for the scale-1 input and runs the network for other scales."""

    def __init__(self, model, outputs, i: int, n: int, flip: bool, size: tuple[int, int]):
        self.model, self.size = model, tuple(size)
        rows = [i, n + i] if flip else [i]
        self.outputs = tuple(o[rows] for o in outputs)
        self.rows = len(rows)

    def __call__(self, x: torch.Tensor):
        if x.shape[0] == self.rows and tuple(x.shape[-2:]) == self.size:
            return self.outputs
        return self.model(x)


class DEKR(PoseModel):
    """HRNet + heatmap head + disentangled offset head; ``predict`` runs the official inference pipeline."""

    size_divisibility = 32

    def __init__(self, cfg: DEKRConfig, num_keypoints: int = 17, flip_index: list[int] | None = None,
                 data_format: str = "coco", input_size: int = 512):
        super().__init__()
        self.cfg = cfg
        self.num_keypoints = num_keypoints
        self.flip_index = list(flip_index) if flip_index is not None else list(range(num_keypoints))
        self.data_format = data_format
        self.input_size = input_size
        self.backbone = HRNetConcat(cfg.backbone, cfg.hrnet_channels, cfg.hrnet_modules, cfg.hrnet_blocks,
                                    layer1_blocks=cfg.hrnet_layer1_blocks, layer1_planes=cfg.hrnet_layer1_planes)
        c = self.backbone.out_channels
        self.heatmap_head = HeatmapHead(c, cfg.head_heatmap_channels, num_keypoints, cfg.head_heatmap_blocks,
                                        cfg.head_heatmap_dilation, cfg.final_conv_kernel)
        self.offset_head = OffsetHead(c, num_keypoints, cfg.offset_channels_per_keypoint, cfg.offset_blocks,
                                      cfg.final_conv_kernel, cfg.adaptive_conv_impl, cfg.multi_branch,
                                      cfg.adaptive_conv)
        self.init_weights()
        self.rescorer = PoseRescorer.from_file(cfg.rescore_weights) if cfg.rescore_weights else None

    def init_weights(self) -> None:
        """Official init of the heads: every conv N(0, 0.001^2) with zero bias, BN (1, 0); the affine / translation
        convs of the adaptive blocks all zeros; the adaptive kernels torchvision's kaiming-uniform(a=sqrt 5).
        Official code applies the same N(0, 0.001^2) to the backbone and then overwrites it from ImageNet weights;
        without ImageNet weights we keep timm's kaiming init there (the official init assumes a pretrained trunk)."""
        for head in (self.heatmap_head, self.offset_head):
            for m in head.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.normal_(m.weight, std=0.001)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
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
        n = len(metas)
        shared = None
        if n > 1 and all(tuple(m["input_size"]) == tuple(images.shape[-2:]) for m in metas):
            inp = torch.cat([images, flip_input(images)]) if test_cfg.flip else images
            shared = self(inp)                                       # (2N or N, ...) heatmaps, offsets
        results = []
        for i, meta in enumerate(metas):
            h, w = meta["input_size"]
            raw = meta.pop("image_raw", None)
            net = self if shared is None else _BatchedScaleOne(self, shared, i, n, test_cfg.flip, (h, w))
            poses, scores = run_pipeline(net, raw, self.cfg, self.flip_index, self.input_size, test_cfg.flip,
                                         test_cfg.scales, base_input=images[i:i + 1, :, :h, :w],
                                         device=images.device)
            results.append(self.to_result(poses, scores, meta["inverse"]))
        return results

    def to_result(self, poses: np.ndarray, scores: np.ndarray, inverse: np.ndarray) -> PoseResult:
        """Base-image poses -> original pixels (official ``get_final_preds``), then rescoring if a net is loaded."""
        final = map_poses(poses, inverse)
        if self.rescorer is not None:
            scores = self.rescorer(final, scores)
        return poses_to_result(final, scores)

    def load_rescore_net(self, source) -> None:
        """Use a rescoring net (file path or state dict, official key names ``l1/l2/l3``)."""
        self.rescorer = PoseRescorer.from_file(source) if isinstance(source, (str, Path)) else \
            PoseRescorer.from_state_dict(source)


# ----------------------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------------------
def heatmap_loss(pred: torch.Tensor, gt: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted MSE averaged over every element (N, K+1, H, W); the weight map is 1 near people, BG_WEIGHT elsewhere,
    0 in ignored regions (paper Eq. 4)."""
    return (weight * (pred - gt) ** 2).mean()


def offset_loss(pred: torch.Tensor, gt: torch.Tensor, weight: torch.Tensor, beta: float = 1.0 / 9) -> torch.Tensor:
    """Smooth-L1 (beta 1/9) weighted by 1/sqrt(person area), summed and divided by the number of supervised
    entries (x and y counted separately, at least 1): the paper's normalised offset loss (Eq. 5).
    Official code: the count is the whole batch's, not per image or person (train_step README Q12), and per GPU
    (set to 1 when 0); we normalise over the global batch so results do not depend on the number of processes
    (identical with one process) (:func:`~regpose.models.layers.distributed.global_normalizer`)."""
    loss = F.smooth_l1_loss(pred, gt, reduction="none", beta=beta) * weight
    return loss.sum() / global_normalizer((weight > 0).sum())


# ----------------------------------------------------------------------------------------------------------
# Rescoring net (PredictOKSNet): predicts the OKS of a pose from its limb geometry and keypoint scores
# ----------------------------------------------------------------------------------------------------------
class PredictOKSNet(nn.Module):
    """Linear(F, H) + ReLU, Linear(H, H) + ReLU, Linear(H, 1); official keys l1, l2, l3."""

    def __init__(self, in_features: int, hidden: int = 256):
        super().__init__()
        self.l1 = nn.Linear(in_features, hidden)
        self.l2 = nn.Linear(hidden, hidden)
        self.l3 = nn.Linear(hidden, 1)

    def reset_parameters(self) -> None:
        """Official init: kaiming-uniform(a=1) weights, zero biases."""
        for lin in (self.l1, self.l2, self.l3):
            nn.init.kaiming_uniform_(lin.weight, a=1)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l3(F.relu(self.l2(F.relu(self.l1(x)))))


def rescore_features(poses: np.ndarray) -> np.ndarray:
    """(P, K, 3) poses (x, y, keypoint score) -> (P, 2L + L + K) features: limb vectors / torso, limb lengths /
    torso, keypoint scores (official ``get_feature``; torso = mean length of links 9 and 11, at least 1)."""
    poses = np.asarray(poses, dtype=np.float32)
    p, k, _ = poses.shape
    links = np.asarray(RESCORE_LINKS[k])
    vec = poses[:, links[:, 0], :2] - poses[:, links[:, 1], :2]          # (P, L, 2)
    length = np.sqrt((vec ** 2).sum(-1))                                  # (P, L)
    norm = (length[:, 9] + length[:, 11]) / 2
    norm[norm < 1] = 1
    return np.concatenate([vec.reshape(p, -1) / norm[:, None], length / norm[:, None], poses[:, :, 2]],
                          axis=1).astype(np.float32)


class PoseRescorer:
    """Holds a :class:`PredictOKSNet` and rescales instance scores by its predicted OKS.

    Deliberately not an ``nn.Module`` attribute of :class:`DEKR`: its weights live in their own file (as officially),
    so pose-network checkpoints load with or without one."""

    def __init__(self, net: PredictOKSNet):
        self.net = net.eval()

    @classmethod
    def from_state_dict(cls, state: dict) -> "PoseRescorer":
        from ..errors import CheckpointError

        if "l1.weight" not in state or "l3.weight" not in state:
            raise CheckpointError(f"rescore weights: expected keys l1/l2/l3, got {sorted(state)[:6]}")
        hidden, in_features = state["l1.weight"].shape
        net = PredictOKSNet(int(in_features), int(hidden))
        net.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()}, strict=True)
        return cls(net)

    @classmethod
    def from_file(cls, path) -> "PoseRescorer":
        if str(path).endswith(".npz"):
            with np.load(path) as z:
                return cls.from_state_dict({k: torch.from_numpy(z[k]) for k in z.files})
        from ..engine.checkpoint import load_state_dict_file

        return cls.from_state_dict(load_state_dict_file(path))

    @torch.no_grad()
    def __call__(self, poses: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Final instance score = predicted OKS (NaN -> 0) x instance score (official ``rescore_valid``)."""
        if len(poses) == 0:
            return np.asarray(scores, dtype=np.float64)
        feats = torch.from_numpy(rescore_features(poses))
        out = self.net(feats).numpy()[:, 0].astype(np.float64)
        out[np.isnan(out)] = 0
        return out * np.asarray(scores, dtype=np.float64)


# ----------------------------------------------------------------------------------------------------------
# Inference (official tools/valid.py per-image path; spec Sec. 3)
# ----------------------------------------------------------------------------------------------------------
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)
_STRIDE = 4.0        # official DATASET.INPUT_SIZE / OUTPUT_SIZE


def _ceil64(x: float) -> int:
    return int(math.ceil(x / 64.0) * 64)


def official_test_resize(h: int, w: int, input_size: int, scale: float = 1.0):
    """Official resize policy: the short side goes to ceil64(input_size)*scale, the long side keeps the aspect ratio
    rounded *up* to a multiple of 64 (times scale); a similarity about the image center.

    Returns (W_r, H_r), the (2, 3) float64 affine original -> resized pixels, and its inverse."""
    base = _ceil64(input_size)
    if w < h:
        w_r, h_r = int(base * scale), int(_ceil64(base / w * h) * scale)
    else:
        h_r, w_r = int(base * scale), int(_ceil64(base / h * w) * scale)
    alpha = int(base * scale) / min(w, h)
    cx, cy = int(w / 2.0 + 0.5), int(h / 2.0 + 0.5)
    fwd = np.array([[alpha, 0.0, w_r / 2.0 - alpha * cx], [0.0, alpha, h_r / 2.0 - alpha * cy]])
    inv = np.array([[1 / alpha, 0.0, cx - w_r / 2.0 / alpha], [0.0, 1 / alpha, cy - h_r / 2.0 / alpha]])
    return (w_r, h_r), fwd, inv


def resize_for_test(image_rgb: np.ndarray, input_size: int, scale: float = 1.0):
    """Warp an RGB uint8 image with the official test resize (bilinear, zero border).
    Returns (resized uint8 (H_r, W_r, 3), inverse affine resized -> original)."""
    import cv2

    h, w = image_rgb.shape[:2]
    (w_r, h_r), fwd, inv = official_test_resize(h, w, input_size, scale)
    if w_r % 32 or h_r % 32:
        from ..config import ConfigError

        raise ConfigError(f"test.scales: scale {scale} gives a {w_r}x{h_r} input, not a multiple of 32 "
                          f"(DEKR's HRNet needs it); use scales like 0.5, 1, 1.5, 2")
    out = cv2.warpAffine(image_rgb, fwd, (w_r, h_r), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=0)
    return out, inv


def normalize_image(image_rgb: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) RGB -> float32 (3, H, W): /255 then ImageNet mean / std (ToTensor + Normalize)."""
    t = torch.from_numpy(np.ascontiguousarray(image_rgb)).permute(2, 0, 1).float().div(255)
    mean = torch.tensor(_MEAN).view(3, 1, 1)
    std = torch.tensor(_STD).view(3, 1, 1)
    return (t - mean) / std


def flip_input(x: torch.Tensor, shift: int = 3) -> torch.Tensor:
    """Official flip-test input: flip along W, then shift left by 3 pixels (the last 3 columns keep their flipped
    values) so that the input flip matches the output flip x -> w-1-x under x_in = 4 x_out."""
    xf = x.flip(3)
    xf[..., :-shift] = xf[..., shift:].clone()
    return xf


def offset_to_pose(offset: torch.Tensor) -> torch.Tensor:
    """(N, 2K, h, w) offsets -> pose map (N, 2K, h, w): joint j at (x - off_2j, y - off_2j+1), output pixels."""
    n, c, h, w = offset.shape
    xs = torch.arange(w, dtype=offset.dtype, device=offset.device).view(1, 1, 1, w)
    ys = torch.arange(h, dtype=offset.dtype, device=offset.device).view(1, 1, h, 1)
    off = offset.view(n, c // 2, 2, h, w)
    return torch.stack([xs - off[:, :, 0], ys - off[:, :, 1]], dim=2).view(n, c, h, w)


def merge_flip(heatmap: torch.Tensor, posemap: torch.Tensor, flip_index: list[int]):
    """Average the plain (batch 0) and flipped (batch 1) outputs in the plain frame: heatmaps flipped back with
    left/right channels swapped (center stays), flipped poses reindexed, x -> w-1-x, map flipped back along W."""
    k = len(flip_index)
    h, w = heatmap.shape[-2:]
    heat = (heatmap[:1] + heatmap[1:2].flip(3)[:, list(flip_index) + [k]]) / 2
    pf = posemap[1:2].view(1, k, 2, h, w)[:, flip_index]
    pf = torch.stack([(w - 1) - pf[:, :, 0], pf[:, :, 1]], dim=2).view(1, 2 * k, h, w).flip(3)
    return heat, (posemap[:1] + pf) / 2


def up_interpolate(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Official upsampling to the base size: bilinear align_corners=True to (S - f + 1) with f = int(S / s), then
    replicate f - 1 rows / columns at the bottom / right, so output pixel i reads input pixel i / f."""
    h, w = x.shape[-2:]
    fh, fw = int(size[0] / h), int(size[1] / w)
    y = F.interpolate(x, size=(size[0] - fh + 1, size[1] - fw + 1), mode="bilinear", align_corners=True)
    return F.pad(y, (0, fw - 1, 0, fh - 1), mode="replicate")


def center_proposals(heatmap: torch.Tensor, posemap: torch.Tensor, scale: float, cfg: DEKRConfig) -> torch.Tensor:
    """People at one scale: NMS on the center heatmap (max-pool 3/5/7 by map size, keep exact maxima), top
    MAX_NUM_PEOPLE above KEYPOINT_THRESHOLD; their poses x 4/scale (base pixels) with the center value as score.
    Returns (P, K, 3) in descending center order."""
    h, w = heatmap.shape[-2:]
    center = heatmap[0, -1:]                                            # (1, h, w)
    size = (h + w) / 2.0
    k = 7 if size > cfg.pool_threshold1 else 5 if size > cfg.pool_threshold2 else 3
    pooled = F.max_pool2d(center, k, 1, (k - 1) // 2)
    center = center * (pooled == center).float()
    scores, inds = center.view(-1).topk(min(cfg.max_num_people, h * w))
    keep = scores > cfg.keypoint_threshold
    scores, inds = scores[keep], inds[keep]
    nk = posemap.shape[1] // 2
    poses = posemap[0].view(nk, 2, h * w)[:, :, inds].permute(2, 0, 1) * (_STRIDE / scale)   # (P, K, 2)
    return torch.cat([poses, scores.view(-1, 1, 1).expand(-1, nk, 1)], dim=2)


def pose_nms(proposals: list[torch.Tensor], scales_desc: list[float], heatmap_avg: torch.Tensor, cfg: DEKRConfig):
    """Merge the scales' proposals and remove duplicates (official ``pose_nms``).

    proposals: per scale (descending scale order) (P_s, K, 3); heatmap_avg (K+1, H, W) at base resolution.
    Non-unit scales' scores are rescaled to scale 1's maximum x DECREASE; each keypoint is scored by the heatmap
    value under it (nearest-floor lookup) x the center score; a proposal j overlaps i when more than NMS_NUM_THRE
    joints lie within NMS_THRE * sqrt(area_i); greedily, the group of proposal i keeps its member with the highest
    mean heat value. Returns (poses (P', K, 3) float32 numpy, instance scores (P',), keep indices)."""
    props = [p.clone().cpu().float() for p in proposals]
    one = scales_desc.index(1.0)
    ref_max = props[one][:, :, 2].max() if len(props[one]) else torch.tensor(1.0)
    for i, p in enumerate(props):
        if i != one:
            m = p[:, :, 2].max() if len(p) else torch.tensor(1.0)
            p[:, :, 2] = p[:, :, 2] / m * ref_max * cfg.decrease
    allp = torch.cat(props, dim=0)                                      # (P, K, 3)
    k = heatmap_avg.shape[0] - 1
    if len(allp) == 0:
        return np.zeros((0, k, 3), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int64)
    coord, score = allp[:, :, :2], allp[:, :, 2:]
    hm = heatmap_avg[:k].cpu()
    hh, ww = hm.shape[-2:]
    yb = coord[:, :, 1].floor().clamp(0, hh - 1).long()
    xl = coord[:, :, 0].floor().clamp(0, ww - 1).long()
    heatval = hm.view(k, -1).t().gather(0, yb * ww + xl).unsqueeze(-1)  # (P, K, 1)
    heat_score = heatval.sum(1)[:, 0] / k
    poses = torch.cat([coord, score * heatval], dim=2)
    keep = _greedy_pose_nms(coord, heat_score, cfg.nms_threshold, cfg.nms_num_threshold)
    keep_t = torch.as_tensor(keep, dtype=torch.long)
    poses, heat_score = poses[keep_t], heat_score[keep_t]
    if len(keep) > cfg.max_num_people:
        heat_score, top = heat_score.topk(cfg.max_num_people)
        poses = poses[top]
    poses = poses.numpy()
    return poses, poses[:, :, 2].mean(axis=1), np.asarray(keep, dtype=np.int64)


def _greedy_pose_nms(coord: torch.Tensor, heat_score: torch.Tensor, thre: float, num_thre: int) -> list[int]:
    """Official ``nms_core``: the overlap relation is one vectorised (P, P, K) distance test; the greedy pass is
    sequential over at most MAX_NUM_PEOPLE x scales proposals on a precomputed boolean matrix."""
    xy_max, xy_min = coord.max(dim=1).values, coord.min(dim=1).values
    area = ((xy_max - xy_min) ** 2).sum(1)                              # (P,) squared extent diagonal
    dist = (coord[:, None] - coord[None]).pow(2).sum(3).sqrt()          # (P, P, K)
    overlap = ((dist < thre * area.sqrt()[:, None, None]).sum(2) > num_thre).numpy()
    heat = heat_score.numpy()
    suppressed = np.zeros(len(coord), dtype=bool)
    keep = []
    for i in range(len(coord)):
        if suppressed[i]:
            continue
        group = np.flatnonzero(overlap[i])
        if len(group) == 0:   # degenerate pose (zero extent): its own group
            group = np.array([i])
        best = int(group[np.argmax(heat[group])])
        if suppressed[best]:
            continue
        keep.append(best)
        suppressed[group] = True
    return keep


def match_pose_to_heatmap(poses: np.ndarray, heatmap_avg: torch.Tensor, cfg: DEKRConfig):
    """TEST.MATCH_HMP: (a) move each joint to the nearest of its channel's top MAX_NUM_PEOPLE heatmap peaks (5x5
    NMS) when closer than MAX_ABSORB_DISTANCE; (b) refine joints scoring above ADJUST_THRESHOLD by a 2-D Gaussian
    fit (scipy ``curve_fit``) in a (2*GUASSIAN_KERNEL+1)^2 window. Returns (poses, fit calls, fits that worked)."""
    poses = np.array(poses, dtype=np.float32, copy=True)
    k = heatmap_avg.shape[0] - 1
    hm = heatmap_avg[:k].detach().cpu().float()                          # (K, H, W)
    hh, ww = hm.shape[-2:]
    if len(poses) == 0:
        return poses, 0, 0
    # (a) absorb into heatmap peaks
    pooled = F.max_pool2d(hm[None], 5, 1, 2)[0]
    peaks_val = hm * (pooled == hm).float()
    _, idx = peaks_val.view(k, -1).topk(min(cfg.max_num_people, hh * ww), dim=1)      # (K, M)
    peaks = torch.stack([idx % ww, idx // ww], dim=-1).float()           # (K, M, 2) x, y
    xy = torch.from_numpy(poses[:, :, :2])                               # (P, K, 2)
    d = (xy[:, :, None, :] - peaks[None]).pow(2).sum(-1).sqrt()          # (P, K, M)
    dmin, arg = d.min(dim=2)
    nearest = peaks[torch.arange(k)[None, :], arg]                       # (P, K, 2)
    absorb = (dmin < cfg.max_absorb_distance).numpy()
    poses[:, :, :2] = np.where(absorb[..., None], nearest.numpy(), poses[:, :, :2])
    # (b) Gaussian refinement, official loop (curve_fit per point, cache of fitted (row, col) per joint)
    calls = ok = 0
    hm_np = hm.numpy()
    for j in range(k):
        cache: dict[tuple[int, int], tuple[float, float]] = {}
        for p in range(len(poses)):
            if not poses[p, j, 2] > cfg.adjust_threshold:
                continue
            r, c = int(poses[p, j, 1] + 0.5), int(poses[p, j, 0] + 0.5)
            if (r, c) in cache:
                poses[p, j, 1], poses[p, j, 0] = cache[(r, c)]
                continue
            calls += 1
            fit = _gaussian_refine(hm_np[j], r, c, cfg.gaussian_kernel, cfg.sigma)
            if fit is not None:
                ok += 1
                poses[p, j, 1], poses[p, j, 0] = fit
                cache[(r, c)] = (float(poses[p, j, 1]), float(poses[p, j, 0]))
    return poses, calls, ok


def _gauss2d(uv, amplitude, y0, x0, sigma):
    u, v = uv
    return amplitude * np.exp(-((u - x0) ** 2 + (v - y0) ** 2) / (2 * sigma ** 2))


def _gaussian_refine(hm: np.ndarray, r: int, c: int, radius: int, sigma: float):
    """Fit a Gaussian around (r, c); returns the refined (y, x) or None when the fit fails (official: point kept).
    Official code: the window is flattened row-major but element n is paired with (v, u) = (n // rows, n % rows),
    which scrambles non-square windows at the map border; reproduced."""
    from scipy.optimize import curve_fit

    hh, ww = hm.shape
    rc, cc = min(max(r, 0), hh - 1), min(max(c, 0), ww - 1)
    r0, r1 = max(0, rc - radius), min(hh - 1, rc + radius)
    c0, c1 = max(0, cc - radius), min(ww - 1, cc + radius)
    patch = hm[r0:r1 + 1, c0:c1 + 1]
    rows = patch.shape[0]
    n = np.arange(patch.size)
    uv = (n % rows, n // rows)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            popt, _ = curve_fit(_gauss2d, uv, patch.ravel(), p0=(hm[rc, cc], rc - r0, cc - c0, sigma), maxfev=300)
    except Exception:  # noqa: BLE001 - official: any failure leaves the point unchanged
        return None
    return r0 + popt[1], c0 + popt[2]


def _infer_scale(net, x: torch.Tensor, flip: bool, flip_index: list[int]):
    """Network outputs at one scale for one image, flip-merged: heatmaps (1, K+1, h, w), pose map (1, 2K, h, w)."""
    inp = torch.cat([x, flip_input(x)]) if flip else x
    heatmap, offset = net(inp)
    posemap = offset_to_pose(offset.float())
    heatmap = heatmap.float()
    if flip:
        return merge_flip(heatmap, posemap, flip_index)
    return heatmap[:1], posemap[:1]


@torch.no_grad()
def run_pipeline(net, image_rgb: np.ndarray | None, cfg: DEKRConfig, flip_index: list[int], input_size: int,
                 flip: bool = True, scales=(1.0,), base_input: torch.Tensor | None = None,
                 device: torch.device | str = "cpu", trace: dict | None = None):
    """Official single-image inference up to poses in base-image (scale-1 input) pixels.

    net: callable (B, 3, H, W) -> (heatmaps, offsets) (the PyTorch model or an ONNX Runtime wrapper).
    image_rgb: original uint8 RGB image (needed for scales != 1); base_input: the normalised scale-1 input (1, 3, H, W)
    when already computed. Returns (poses (P, K, 3) [x, y, keypoint score], scores (P,)); ``trace`` (a dict) collects
    every intermediate stage under the reference files' names."""
    scales_desc = sorted((float(s) for s in scales), reverse=True)
    if 1.0 not in scales_desc:
        from ..config import ConfigError

        raise ConfigError(f"test.scales: must contain 1.0 (DEKR maps everything to the scale-1 size), got {scales}")
    heatmap_sum, proposals = None, []
    for s in scales_desc:
        if s == 1.0 and base_input is not None:
            x = base_input
        else:
            if image_rgb is None:
                raise ValueError(f"DEKR multi-scale test: scale {s} needs the original image (meta['image_raw'])")
            resized, _ = resize_for_test(image_rgb, input_size, s)
            x = normalize_image(resized)[None]
            if trace is not None:
                trace[f"s{s:g}/image_resized_uint8"] = resized
        heatmap, posemap = _infer_scale(net, x.to(device), flip, flip_index)
        h, w = heatmap.shape[-2:]
        r = _STRIDE / s
        up = up_interpolate(heatmap, (int(r * h), int(r * w)))
        heatmap_sum = up if heatmap_sum is None else heatmap_sum + up
        props = center_proposals(heatmap, posemap, s, cfg)
        proposals.append(props)
        if trace is not None:
            trace[f"s{s:g}/heatmap_merged"] = heatmap.cpu().numpy()
            trace[f"s{s:g}/posemap_merged"] = posemap.cpu().numpy()
            trace[f"s{s:g}/proposals"] = props.cpu().numpy()
    heatmap_avg = heatmap_sum[0] / len(scales_desc)                       # (K+1, H_b, W_b)
    poses, scores, keep = pose_nms(proposals, scales_desc, heatmap_avg, cfg)
    if trace is not None:
        trace.update({"heatmap_avg": heatmap_avg[None].cpu().numpy(), "nms_keep_inds": keep,
                      "nms_poses": poses.copy(), "nms_scores": scores.copy()})
    if cfg.match_hmp:
        poses, calls, ok = match_pose_to_heatmap(poses, heatmap_avg, cfg)
        if trace is not None:
            trace.update({"matched_poses": poses.copy(), "gauss_fit_calls": calls, "gauss_fit_ok": ok})
    return poses, scores


def map_poses(poses: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine to the xy of (P, K, 3) poses (float64 out, keypoint scores kept)."""
    a = np.asarray(inverse, dtype=np.float64)
    out = np.array(poses, dtype=np.float64, copy=True)
    xy = out[..., :2] @ a[:, :2].T + a[:, 2]
    out[..., :2] = xy
    return out


def poses_to_result(poses: np.ndarray, scores: np.ndarray) -> PoseResult:
    """PoseResult with keypoint-extent boxes (as the official results' bbox)."""
    k = poses.shape[1] if poses.ndim == 3 else 0
    if len(poses) == 0:
        return PoseResult.empty(k)
    boxes = np.concatenate([poses[:, :, :2].min(1), poses[:, :, :2].max(1)], axis=1)
    return PoseResult(boxes, poses, scores)


# ----------------------------------------------------------------------------------------------------------
# Builder, transform, registration
# ----------------------------------------------------------------------------------------------------------
def build_dekr(cfg) -> DEKR:
    fmt = cfg.data.format
    num_keypoints, flip_index = keypoint_layout(fmt)
    input_size = cfg.model.test_input_size or int(min(cfg.data.input_size))
    return DEKR(cfg.model, num_keypoints, flip_index, fmt, input_size)


def eval_sample(image_rgb: np.ndarray, input_size: int, keep_raw: bool = False) -> dict:
    """Scale-1 test input of one image with the official resize: {"image": (3, H_r, W_r), "meta": sizes, inverse}.
    ``keep_raw`` adds the original image (``image_raw``) for multi-scale testing."""
    h, w = image_rgb.shape[:2]
    resized, inverse = resize_for_test(image_rgb, input_size, 1.0)
    meta = {"orig_size": (h, w), "input_size": tuple(resized.shape[:2]), "inverse": inverse}
    if keep_raw:
        meta["image_raw"] = image_rgb
    return {"image": normalize_image(resized), "meta": meta}


class DEKRTrainTransform:
    """Raw sample -> DEKR training sample (spec Sec. 2): person joints + center slot and offset areas in original
    pixels, the official random affine / flip (data.augment.bottomup) to the square input and the stride-4 output,
    then the heatmap / offset targets with their weights (ignore mask from crowds and unlabelled people)."""

    def __init__(self, cfg):
        from ..data.transforms import bottomup_train_transforms

        self.fmt = cfg.data.format
        self.k, flip_index = keypoint_layout(self.fmt)
        size = int(cfg.data.input_size[0])
        if size % 32:
            from ..config import ConfigError

            raise ConfigError(f"data.input_size: DEKR needs a multiple of 32, got {cfg.data.input_size}")
        self.output_size = size // 4
        self.model_cfg = cfg.model
        # the center slot (index K) maps to itself under flips
        self.augment = bottomup_train_transforms(cfg.data, flip_index=list(flip_index) + [self.k],
                                                 output_sizes=(self.output_size,), mask=True)

    def arrays(self, raw: dict, rng=None) -> dict:
        """Every array the official ``CocoKeypoints.__getitem__`` makes of one image (numpy, in that order):
        ``joints_raw`` (P, K+1, 3) / ``area_raw`` (P,) in original pixels, the augmented ``sample`` (uint8 input
        image, meta fields, ``augment`` parameters), ``joints`` (P, K+1, 3) output pixels, ``area`` (P,) scaled,
        ``ignore_mask`` (R, R), ``heatmap`` and ``heatmap_weight`` (K+1, R, R; weight before the mask), ``mask`` =
        ignore_mask x heatmap_weight (the heatmap-loss weight), ``offset`` / ``offset_weight`` (2K, R, R)."""
        from ..data.targets import dekr_heatmaps, dekr_joints, dekr_offsets
        from ..data.transforms import select_people

        m = self.model_cfg
        # Official code: the area < 32^2 "no center" rule is COCO's (CrowdPose has no such check)
        joints, area, keep = dekr_joints(raw["keypoints"], raw["areas"], raw["iscrowd"], raw["num_keypoints"],
                                         area_check=self.fmt != "crowdpose")
        sample = select_people(dict(raw), keep)
        sample["keypoints"] = joints                                     # (P, K+1, 3), original pixels
        sample = self.augment(sample, rng)
        layer = sample["outputs"][0]
        r = self.output_size
        # Official code: the offset-weight area is scaled to INPUT pixels² (area_scale = (input / 200 s)²) while
        # the offsets are in output pixels (train_step README Q10)
        out = {"joints_raw": joints, "area_raw": area, "sample": sample, "joints": layer["keypoints"],
               "area": area * sample["area_scale"], "ignore_mask": layer["mask"]}
        out["heatmap"], out["heatmap_weight"] = dekr_heatmaps(out["joints"], r, m.sigma, m.center_sigma, m.bg_weight)
        out["mask"] = out["ignore_mask"][None] * out["heatmap_weight"]  # Official code: mask_list[0] * ignored
        out["offset"], out["offset_weight"] = dekr_offsets(out["joints"], out["area"], r, m.offset_radius)
        return out

    def __call__(self, raw: dict, rng=None) -> dict:
        from ..data.transforms import make_meta, to_tensor_normalize

        a = self.arrays(raw, rng)
        sample = a["sample"]
        target = {"heatmap": torch.from_numpy(a["heatmap"]), "heatmap_weight": torch.from_numpy(a["mask"]),
                  "offset": torch.from_numpy(a["offset"]), "offset_weight": torch.from_numpy(a["offset_weight"])}
        sample["keypoints"] = sample["keypoints"][:, :self.k]
        return {"image": to_tensor_normalize(sample["image"]), "target": target, "meta": make_meta(sample)}


class DEKREvalTransform:
    """Raw sample -> test sample: the official scale-1 resize (spec Sec. 3.1); with multi-scale testing the original
    image rides along in ``meta['image_raw']`` (``predict`` resizes it to the other scales and drops it)."""

    def __init__(self, cfg):
        self.input_size = cfg.model.test_input_size or int(min(cfg.data.input_size))
        self.keep_raw = [float(s) for s in cfg.test.scales] != [1.0]

    def __call__(self, raw: dict, rng=None) -> dict:
        from ..data.transforms import BottomUpTestResize, Compose, make_meta, to_tensor_normalize

        original = raw["image"]
        sample = dict(raw)
        sample.setdefault("keypoints", np.zeros((0, 1, 3)))     # inference inputs carry no annotations
        sample = Compose([BottomUpTestResize(self.input_size, 1.0)])(sample, rng)
        meta = make_meta(sample)
        if self.keep_raw:
            meta["image_raw"] = original
        return {"image": to_tensor_normalize(sample["image"]), "target": {}, "meta": meta}


def dekr_transform(cfg, train: bool):
    """DEKR's data pipeline: :class:`DEKRTrainTransform` for training, :class:`DEKREvalTransform` for testing."""
    return DEKRTrainTransform(cfg) if train else DEKREvalTransform(cfg)


def _rescore_records(model: "DEKR", cfg, max_images: int | None, device) -> tuple[np.ndarray, np.ndarray]:
    """Official rescore data generation: predict the training images (flip, scale 1, no rescoring) and pair each
    detection's features with its OKS to the best-matching ground truth (non-exclusive), as COCOeval's ``ious``:
    the top maxDets (20) detections by score, all of the image's ground truths. Images without ground truth are
    skipped. Official code: a target OKS of exactly 1 is replaced by 0."""
    import dataclasses

    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from ..data.collate import Collate
    from ..data.datasets import ImageDataset, load_records
    from ..data.keypoints import get_meta
    from ..evaluation.oks import oks_matrix

    test_cfg = dataclasses.replace(cfg.test, flip=True, scales=[1.0])
    records = load_records(cfg.data.train, cfg.data.format)
    records = [r for r in records if r.num_people > 0][:max_images]
    dataset = ImageDataset(records, DEKREvalTransform(dataclasses.replace(cfg, test=test_cfg)))
    loader = DataLoader(dataset, batch_size=1, num_workers=min(cfg.train.num_workers, 4),
                        collate_fn=Collate(model.size_divisibility))
    sigmas = get_meta(cfg.data.format).sigmas
    feats, targets = [], []
    for batch in tqdm(loader, desc="rescore data", unit="img", dynamic_ncols=True, leave=False):
        batch["images"] = batch["images"].to(device)
        res = model.predict(batch, test_cfg)[0]
        rec = records[int(batch["metas"][0]["sample_index"])]
        if len(res) == 0:
            continue
        top = np.argsort(-res.scores, kind="mergesort")[:20]
        kpts = res.keypoints[top]
        oks = oks_matrix(kpts, rec.keypoints, rec.areas, sigmas, rec.boxes).max(axis=1)
        oks[oks == 1] = 0
        feats.append(rescore_features(kpts))
        targets.append(oks.astype(np.float32))
    if not feats:
        from ..errors import DataError

        raise DataError(f"train-rescore: the model found no people in {len(records)} training images")
    return np.concatenate(feats), np.concatenate(targets)


def train_rescore(cfg, weights: str, out: str, max_images: int | None = None, epochs: int = 20,
                  batch_size: int = 1024, lr: float = 1e-3) -> Path:
    """Train DEKR's rescoring net from a pose model's predictions on the training set (official
    ``valid.py`` with ``rescore_*.yaml`` then ``train_scorenet.py``): MSE to the OKS of each predicted pose, Adam lr
    1e-3, 20 epochs, batch 1024 (last partial batch dropped; smaller sets use one full batch), shuffled per epoch.
    Writes ``{"model": l1/l2/l3 state dict, ...}`` to ``out`` (use it as ``model.rescore_weights``)."""
    from ..engine.checkpoint import atomic_save, load_model_weights

    torch.manual_seed(cfg.train.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_dekr(cfg)
    load_model_weights(model, weights)
    model.rescorer = None
    model.to(device).eval()
    x, y = _rescore_records(model, cfg, max_images, device)
    # Official code: records are written once per COCO eval area range (all / medium / large), so every detection
    # appears 3 times; the CrowdPose evaluator has a single range.
    repeats = 1 if cfg.data.format == "crowdpose" else 3
    x, y = torch.from_numpy(np.repeat(x, repeats, 0)), torch.from_numpy(np.repeat(y, repeats, 0))
    net = PredictOKSNet(x.shape[1], cfg.model.rescore_hidden)
    net.reset_parameters()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    bs = min(batch_size, len(x))
    gen = torch.Generator().manual_seed(cfg.train.seed)
    losses = []
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(len(x) // bs):
            idx = perm[i * bs:(i + 1) * bs]
            loss = F.mse_loss(net(x[idx])[:, 0], y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        losses.append(total / max(len(x) // bs, 1))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_save({"model": net.state_dict(), "kind": "rescore", "num_records": int(len(x)), "epoch_losses": losses,
                 "source_weights": str(weights)}, out)
    return out


register_method(MethodSpec(name="dekr", config_cls=DEKRConfig, build=build_dekr, family="bottomup",
                           transform=dekr_transform))
