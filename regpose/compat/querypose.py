"""Official QueryPose checkpoints (buptxyb666/QueryPose, detectron2) -> regpose, and the reference check.

``convert_state_dict`` maps every key of the official state dict (see
``../shared/reference/querypose/manifest_*.tsv``): detectron2 ResNet / pose-HRNet / Swin backbones, FPN /
HRFPN / HRFPN_v1 necks, the Sparse R-CNN box heads, the keypoint decoders and the RealNVP flow of the loss.
Keys the official model holds but never uses are listed in ``UNUSED_*`` and dropped only on request.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import torch

from ..config import TestConfig, from_dict
from ..data.collate import collate
from ..data.keypoints import get_meta
from ..errors import CheckpointError
from ..models.querypose import QueryPose, QueryPoseConfig
from ..models.querypose.decode import to_result
from ..models.weights import detectron2_resnet_key
from .official import load_npz_state_dict

__all__ = ["is_official", "convert_state_dict", "config_from_official", "reference_check", "build_reference_model",
           "convert_neck_state_dict", "UNUSED_KEY_PATTERNS", "DERIVED_KEY_PATTERNS"]

# Official keys that exist but never influence an output (spec 0, README_measurements). Kept as parameters
# when the model is built with ``keep_unused_official`` (the default), dropped otherwise.
UNUSED_KEY_PATTERNS = [
    r"^head\.pose_head_series\.\d+\.updater\.(fc3|norm_fc3)\.",   # SIM fc3 / norm_fc3
    r"^backbone\.fpn_conv\.4\.",                                   # HRFPN / HRFPN_v1 fifth output conv
    r"^backbone\.lateral_conv\.0\.",                               # HRFPN_v1 lateral of branch 0
]
# Buffers recomputed by our modules (deterministic tables), consumed and checked, not loaded.
DERIVED_KEY_PATTERNS = [r"\.attn\.relative_position_index$", r"\.attn_mask$"]

_POSE_RENAMES = [
    (r"pose_decoder_inst_interact\.", "inst_interact."),
    (r"^inst_norm\.", "inst_norm."),
    (r"^norm2\.", "inst_norm2."),
    (r"^linear1\.", "inst_linear1."),
    (r"^linear2\.", "inst_linear2."),
    (r"^part_embed_generator\.upsample\.", "part_embed.upsample."),
    (r"^part_embed_generator\.LSA_conv\.", "part_embed.attention_conv."),
    (r"^part_embed_generator\.fc\.", "part_embed.fc."),
    (r"^updater\.", "iteration."),
    (r"^kps_self_attn\.", "part_attn."),
    (r"^self_attn_norm\.", "part_attn_norm."),
    (r"^norm2_l\.", "part_ffn_norm."),
    (r"^linear1_l\.", "part_linear1."),
    (r"^linear2_l\.", "part_linear2."),
    (r"^fc_coord\.(\d+)\.linear\.", r"coord_heads.\1."),
    (r"^fc_sigma\.(\d+)\.linear\.", r"sigma_heads.\1."),
]


def _resnet_key(k: str) -> str:
    """detectron2 ResNet names -> timm ResNet names."""
    new = detectron2_resnet_key(k)
    if new is None:
        raise CheckpointError(f"unexpected official ResNet key 'backbone.bottom_up.{k}'")
    return new


def _swin_key(k: str) -> str:
    """Swin-det names -> ``backbone.`` keys of :class:`regpose.models.backbones.SwinFeatures` (timm inside)."""
    m = re.match(r"^norm(\d)\.(.*)$", k)
    if m:
        return f"norms.{m.group(1)}.{m.group(2)}"
    m = re.match(r"^layers\.(\d+)\.downsample\.(.*)$", k)
    if m:   # detectron2 / official Swin downsamples at the end of a stage, timm at the start of the next
        return f"body.body.layers_{int(m.group(1)) + 1}.downsample.{m.group(2)}"
    k = re.sub(r"^layers\.(\d+)\.", r"layers_\1.", k)
    return f"body.body.{k}"


def _check_relative_position_index(key: str, value: torch.Tensor) -> None:
    """Swin's relative-position index is a fixed table that our (timm) blocks rebuild; make sure the
    checkpoint's equals it (window size from its shape) instead of silently ignoring it."""
    if not key.endswith("relative_position_index") or value.device.type == "meta":
        return
    ws = int(round(math.sqrt(value.shape[0])))
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)
    expected = rel[..., 0] * (2 * ws - 1) + rel[..., 1]
    if tuple(value.shape) != tuple(expected.shape) or not torch.equal(value.long(), expected):
        raise CheckpointError(f"{key}: not the standard Swin relative-position index for window {ws}")


def convert_neck_state_dict(official: dict, keep_unused: bool = True) -> tuple[dict, list[str]]:
    """Official neck keys (``backbone.`` prefix removed: ``fpn_lateral2.*``, ``reduction_conv.0.*``, ...)
    -> our ``neck.`` keys (without prefix). Returns (converted, dropped-unused keys)."""
    out, dropped = {}, []
    hrfpn_v1 = any(k.startswith("lateral_conv.") for k in official)
    for k, v in official.items():
        m = re.match(r"^fpn_(lateral|output)(\d)\.(.*)$", k)
        if m:
            out[f"{'lateral_convs' if m.group(1) == 'lateral' else 'output_convs'}.{int(m.group(2)) - 2}.{m.group(3)}"] = v
            continue
        m = re.match(r"^reduction_conv\.0\.(.*)$", k)
        if m:
            out[f"reduction.{m.group(1)}"] = v
            continue
        m = re.match(r"^fpn_conv\.(\d)\.(.*)$", k)
        if m:
            i = int(m.group(1))
            if i < 4:
                out[f"output_convs.{i}.{m.group(2)}"] = v
            elif keep_unused:
                out[f"unused_output_conv.{m.group(2)}"] = v
            else:
                dropped.append(k)
            continue
        m = re.match(r"^lateral_conv\.(\d)\.(.*)$", k)
        if m and hrfpn_v1:
            i = int(m.group(1))
            if i > 0:
                out[f"lateral_convs.{i - 1}.{m.group(2)}"] = v
            elif keep_unused:
                out[f"unused_lateral_conv.{m.group(2)}"] = v
            else:
                dropped.append(k)
            continue
        raise CheckpointError(f"unexpected official neck key 'backbone.{k}'")
    return out, dropped


def is_official(state: dict) -> bool:
    """An official QueryPose state dict: detectron2's ``head.pose_head_series.*`` keypoint decoders (ours:
    ``kpt_stages.*``)."""
    return any(k.startswith("head.pose_head_series.") for k in state)


def convert_state_dict(official: dict, keep_unused: bool = True, return_dropped: bool = False):
    """Official QueryPose state dict -> regpose :class:`~regpose.models.querypose.QueryPose` state dict.

    Every official key is consumed: mapped, or (with ``keep_unused=False``) dropped because it is listed
    in :data:`UNUSED_KEY_PATTERNS`, or recognised as a derived buffer (:data:`DERIVED_KEY_PATTERNS`).
    An unknown key is an error naming it.
    """
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    bottom = {k[len("backbone.bottom_up."):]: v for k, v in official.items() if k.startswith("backbone.bottom_up.")}
    kind = ("resnet" if any(k.startswith("stem.") for k in bottom) else
            "swin" if any(k.startswith("patch_embed.") for k in bottom) else "hrnet")
    for k, v in bottom.items():
        if any(re.search(p, k) for p in DERIVED_KEY_PATTERNS):
            _check_relative_position_index("backbone.bottom_up." + k, v)
            dropped.append("backbone.bottom_up." + k)
            continue
        if kind == "resnet":
            out["backbone.body." + _resnet_key(k)] = v
        elif kind == "swin":
            out["backbone." + _swin_key(k)] = v
        else:
            out["backbone.body." + k] = v
    neck = {k[len("backbone."):]: v for k, v in official.items()
            if k.startswith("backbone.") and not k.startswith("backbone.bottom_up.")}
    neck_out, neck_dropped = convert_neck_state_dict(neck, keep_unused)
    out.update({"neck." + k: v for k, v in neck_out.items()})
    dropped += ["backbone." + k for k in neck_dropped]

    residual: dict[int, dict[int, dict[str, torch.Tensor]]] = {}
    for k, v in official.items():
        if k.startswith("backbone."):
            continue
        if k in ("init_proposal_features.weight", "init_proposal_boxes.weight", "part_query.weight"):
            out[k] = v
        elif k.startswith("criterion.flow.flow."):
            out["flow." + k[len("criterion.flow.flow."):]] = v
        elif k.startswith("head.head_series."):
            out["box_stages." + k[len("head.head_series."):]] = v
        elif k.startswith("head.pose_head_series."):
            m = re.match(r"^head\.pose_head_series\.(\d+)\.(.*)$", k)
            s, rest = int(m.group(1)), m.group(2)
            if any(re.search(p, k) for p in UNUSED_KEY_PATTERNS) and not keep_unused:
                dropped.append(k)
                continue
            m = re.match(r"^residual_filter\.(\d+)\.(weight|bias)$", rest)
            if m:
                residual.setdefault(s, {}).setdefault(int(m.group(1)), {})[m.group(2)] = v
                continue
            m = re.match(r"^inst_convs\.(\d+)\.(.*)$", rest)
            if m:
                out[f"kpt_stages.{s}.convs.{int(m.group(1)) // 2}.{m.group(2)}"] = v
                continue
            for pat, rep in _POSE_RENAMES:
                new, hits = re.subn(pat, rep, rest)
                if hits:
                    rest = new
                    break
            else:
                raise CheckpointError(f"unexpected official keypoint-decoder key '{k}'")
            out[f"kpt_stages.{s}.{rest}"] = v
        else:
            raise CheckpointError(f"unexpected official QueryPose key '{k}'")
    for s, parts in residual.items():
        order = sorted(parts)
        if order != list(range(len(order))) or any(set(parts[j]) != {"weight", "bias"} for j in order):
            raise CheckpointError(f"head.pose_head_series.{s}.residual_filter: incomplete per-part Linears")
        out[f"kpt_stages.{s}.instance_to_parts.weight"] = torch.cat([parts[j]["weight"] for j in order], 0)
        out[f"kpt_stages.{s}.instance_to_parts.bias"] = torch.cat([parts[j]["bias"] for j in order], 0)
    return (out, dropped) if return_dropped else out


# ----------------------------------------------------------------------------------------------------------
# Official config (detectron2 vocabulary) -> our model section
# ----------------------------------------------------------------------------------------------------------
def _get(cfg: dict, key: str, default=None):
    """Look ``MODEL.X.Y`` up in a reference folder's config.json (``overrides`` win over ``resolved``)."""
    over = cfg.get("overrides", {})
    if key in over:
        v = over[key]
        if isinstance(v, str):
            low = v.strip()
            if low in ("True", "False"):
                return low == "True"
            try:
                return int(low)
            except ValueError:
                try:
                    return float(low)
                except ValueError:
                    return low
        return v
    res = cfg.get("resolved", cfg)
    if key in res:
        return res[key]
    head, _, leaf = key.rpartition(".")
    if head in res and isinstance(res[head], dict) and leaf in res[head]:
        return res[head][leaf]
    return default


def config_from_official(cfg_json: dict) -> dict:
    """Model-section overrides equivalent to an official QueryPose config (as in a reference config.json)."""
    g = lambda k, d=None: _get(cfg_json, k, d)  # noqa: E731
    backbone_name = g("MODEL.BACKBONE.NAME", "build_resnet_fpn_backbone")
    model: dict = {}
    if "resnet" in backbone_name:
        depth = int(g("MODEL.RESNETS.DEPTH", 50))
        if depth not in (50, 101, 152):
            raise CheckpointError(f"official ResNet depth {depth}: only bottleneck ResNets (50/101/152) are mapped")
        res2 = int(g("MODEL.RESNETS.RES2_OUT_CHANNELS", 256))
        stem = int(g("MODEL.RESNETS.STEM_OUT_CHANNELS", 64))
        groups = int(g("MODEL.RESNETS.NUM_GROUPS", 1))
        bottleneck = groups * int(g("MODEL.RESNETS.WIDTH_PER_GROUP", 64))
        if g("MODEL.RESNETS.STRIDE_IN_1X1", False):
            raise CheckpointError("official ResNet with STRIDE_IN_1X1=True (MSRA weights) is not supported")
        planes = res2 // 4
        kw = {}
        if planes != 64 or stem != 64:
            kw["channels"] = [planes * 2 ** i for i in range(4)]
            kw["stem_width"] = stem
        if bottleneck != planes * groups or groups != 1:
            kw["base_width"] = 64 * bottleneck // (planes * groups)
            kw["cardinality"] = groups
        norm = "frozen_bn" if g("MODEL.RESNETS.NORM", "FrozenBN") == "FrozenBN" else "bn"
        model["backbone"] = {"name": f"resnet{depth}", "kwargs": kw, "norm": norm,
                             "freeze_at": int(g("MODEL.BACKBONE.FREEZE_AT", 2))}
        model["neck"] = "fpn"
    elif "hrnet_fpnv1" in backbone_name:
        model.update(backbone={"name": "hrnet_w48", "norm": "bn", "freeze_at": 0}, neck="hrfpn_v1")
    elif "hrnet" in backbone_name:
        model.update(backbone={"name": "hrnet_w32", "norm": "bn", "freeze_at": 0}, neck="hrfpn")
    elif "swin" in backbone_name:
        model.update(backbone={"name": "swin_large_patch4_window7_224", "norm": "bn", "freeze_at": 0}, neck="fpn")
    else:
        raise CheckpointError(f"unknown official backbone builder '{backbone_name}'")
    model.update(
        hidden_dim=int(g("MODEL.SparseRCNN.HIDDEN_DIM", 256)),
        num_proposals=int(g("MODEL.SparseRCNN.NUM_PROPOSALS", 100)),
        num_stages=int(g("MODEL.SparseRCNN.NUM_HEADS", 6)),
        num_heads=int(g("MODEL.SparseRCNN.NHEADS", 8)),
        dim_feedforward=int(g("MODEL.SparseRCNN.DIM_FEEDFORWARD", 2048)),
        dim_dynamic=int(g("MODEL.SparseRCNN.DIM_DYNAMIC", 64)),
        num_cls_layers=int(g("MODEL.SparseRCNN.NUM_CLS", 1)),
        num_reg_layers=int(g("MODEL.SparseRCNN.NUM_REG", 3)),
        class_weight=float(g("MODEL.SparseRCNN.CLASS_WEIGHT", 2.0)),
        giou_weight=float(g("MODEL.SparseRCNN.GIOU_WEIGHT", 2.0)),
        l1_weight=float(g("MODEL.SparseRCNN.L1_WEIGHT", 5.0)),
        focal_alpha=float(g("MODEL.SparseRCNN.ALPHA", 0.25)),
        focal_gamma=float(g("MODEL.SparseRCNN.GAMMA", 2.0)),
        prior_prob=float(g("MODEL.SparseRCNN.PRIOR_PROB", 0.01)),
        box_pooler_resolution=int(g("MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", 7)),
        sampling_ratio=int(g("MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO", 2)),
        kpt_pooler_resolution=int(g("MODEL.ROI_KEYPOINT_HEAD.POOLER_RESOLUTION", 14)),
        part_dim=int(g("MODEL.QueryPose.PART_DIM", 128)),
        num_convs=int(g("MODEL.QueryPose.NUM_CONVS", 6)),
        light=bool(g("MODEL.QueryPose.LIGHT_VERSION", False)),
        part_scheme="c",
        keep_unused_official=True,
    )
    if int(g("MODEL.QueryPose.NUM_PART", 7)) != 7:
        raise CheckpointError("official QueryPose asserts NUM_PART == 7")
    if int(g("MODEL.SparseRCNN.NUM_CLASSES", 1)) != 1:
        raise CheckpointError("official QueryPose person model has NUM_CLASSES == 1")
    if g("MODEL.QueryPose.AUX_KPS_HEATMAP", False):
        raise CheckpointError("AUX_KPS_HEATMAP (off in every official config) is not implemented")
    fpn_out = g("MODEL.FPN.OUT_CHANNELS", model["hidden_dim"])
    if int(fpn_out) != model["hidden_dim"]:
        raise CheckpointError(f"FPN.OUT_CHANNELS {fpn_out} != HIDDEN_DIM {model['hidden_dim']}")
    mean, std = g("MODEL.PIXEL_MEAN"), g("MODEL.PIXEL_STD")
    if mean is not None:
        model["pixel_mean"] = tuple(float(x) for x in mean)
    if std is not None:
        model["pixel_std"] = tuple(float(x) for x in std)
    return model


# ----------------------------------------------------------------------------------------------------------
# Reference check
# ----------------------------------------------------------------------------------------------------------
def build_reference_model(folder: str | Path, **overrides):
    """Our model for a reference folder: config from its config.json, weights from its weights.npz."""

    folder = Path(folder)
    cfg_json = json.loads((folder / "config.json").read_text())
    model_cfg = from_dict(QueryPoseConfig, {**config_from_official(cfg_json), **overrides}, "model")
    model = QueryPose(model_cfg, get_meta("coco"))   # the released QueryPose models are COCO-17
    state = convert_state_dict(load_npz_state_dict(folder / "weights.npz"))
    own = model.state_dict()
    for k in [k for k in own if k.endswith("num_batches_tracked") and k not in state]:
        state[k] = torch.zeros((), dtype=torch.long)   # int buffers left out of weights.npz (all 0)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    bad_shape = [k for k in state if k in own and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or bad_shape:
        raise CheckpointError(f"{folder}: converted weights do not fit: missing {missing[:3]}, unexpected "
                              f"{unexpected[:3]}, shape mismatch {bad_shape[:3]}")
    model.load_state_dict(state)
    return model.eval(), cfg_json


def _reference_batch(folder: Path, model) -> dict:
    """The official inputs as our batch: normalised RGB, zero-padded after normalisation to /32."""

    z = np.load(folder / "inputs.npz")
    mean = torch.tensor(model.cfg.pixel_mean).view(3, 1, 1)
    std = torch.tensor(model.cfg.pixel_std).view(3, 1, 1)
    samples = []
    sizes, outs = z["image_sizes_hw"], z["output_sizes_hw"]
    for b in range(len(sizes)):
        img = torch.from_numpy(z[f"image{b}"]).float()
        (ih, iw), (oh, ow) = sizes[b], outs[b]
        rx, ry = ow / iw, oh / ih   # the data layer's pixel-index inverse of a resize (regpose.data.transforms)
        inverse = np.array([[rx, 0, 0.5 * rx - 0.5], [0, ry, 0.5 * ry - 0.5]], dtype=np.float64)
        samples.append({"image": (img - mean) / std, "meta": {
            "image_id": b, "sample_index": b, "file_name": f"image{b}", "orig_size": (int(oh), int(ow)),
            "input_hw": (int(ih), int(iw)), "inverse": inverse}})
    return collate(samples, model.size_divisibility)


def reference_check(folder: str | Path, conv_impl: str | None = None) -> list[tuple[str, float, float]]:
    """Compare our converted model with the official outputs of a reference folder.

    Rows: (array, max abs error, tolerance). Per-stage logits, boxes, mu, sigma, keypoint scores, instance
    and part queries; final detections by proposal index (boxes, scores, keypoints in output pixels); FPN
    maps; and, if ``train_loss.npz`` is present, every training-loss term (tolerance rtol 1e-4) and the
    Hungarian matches of every stage (number of differing indices, tolerance 0).
    """

    folder = Path(folder)
    model, cfg_json = build_reference_model(folder)
    if conv_impl:
        model.conv_impl = conv_impl
    ref = np.load(folder / "outputs.npz")
    batch = _reference_batch(folder, model)
    sizes = torch.tensor([list(m["input_hw"]) for m in batch["metas"]])
    rows: list[tuple[str, float, float]] = []

    def add(name, ours, theirs, tol):
        ours = np.asarray(ours, dtype=np.float64)
        theirs = np.asarray(theirs, dtype=np.float64)
        if ours.shape != theirs.shape:
            rows.append((f"{name} (shape {ours.shape} vs {theirs.shape})", float("inf"), tol))
        else:
            rows.append((name, float(np.abs(ours - theirs).max()) if ours.size else 0.0, tol))

    tol_val, tol_px = 2e-4, 2e-2
    with torch.no_grad():
        feats = model.features(batch["images"])
        out = model.decode(batch["images"], sizes, keep_stages=True)
    inter = folder / "intermediates.npz"
    if inter.is_file():
        zi = np.load(inter)
        for lvl, f in zip((2, 3, 4, 5), feats):
            add(f"feat_p{lvl}", f.numpy(), zi[f"feat_p{lvl}"], tol_val)
    st = out["stages"]
    # README tolerance: atol 2e-4 (+ rtol 2e-4); we report the raw max abs error against atol alone.
    add_rel = lambda name, ours, theirs: add(name, ours, theirs, tol_val)  # noqa: E731

    add_rel("stage_class_logits", torch.stack(st["logits"]).numpy(), ref["stage_class_logits"])
    add("stage_boxes_xyxy", torch.stack(st["boxes"]).numpy(), ref["stage_boxes_xyxy"], tol_px)
    add_rel("stage_kps_mu", torch.stack(st["mu"]).numpy(), ref["stage_kps_mu"])
    add_rel("stage_kps_sigma", torch.stack(st["sigma"]).numpy(), ref["stage_kps_sigma"])
    add_rel("stage_kps_score", (1 - torch.stack(st["sigma"])).mean(-1).numpy(), ref["stage_kps_score"])
    for s in range(len(st["logits"])):
        if f"box{s}_obj_features" in ref:
            add_rel(f"box{s}_obj_features", st["query"][s].numpy(), ref[f"box{s}_obj_features"])
        if f"pose{s}_part_query_out" in ref:
            add_rel(f"pose{s}_part_query_out", st["part_query"][s].permute(2, 0, 1, 3).numpy(),
                    ref[f"pose{s}_part_query_out"])
    final = {k: v for k, v in out.items() if k != "stages"}
    test_cfg = TestConfig(score_threshold=-1.0, max_people=10 ** 6)
    for b, meta in enumerate(batch["metas"]):
        pre_idx = ref[f"img{b}_prepost_proposal_index"].astype(np.int64)
        add_rel(f"img{b}_prepost_scores", final["scores"][b].numpy()[pre_idx], ref[f"img{b}_prepost_scores"])
        res = to_result(final, b, meta, test_cfg)
        ours_idx = res.extras["proposal_index"]
        theirs_idx = ref[f"img{b}_final_proposal_index"].astype(np.int64)
        rows.append((f"img{b}_final_proposal_set", float(len(set(ours_idx) ^ set(theirs_idx))), 0.0))
        pos = {int(p): i for i, p in enumerate(ours_idx)}
        sel = [pos.get(int(p), None) for p in theirs_idx]
        if any(s is None for s in sel):
            continue
        kp = res.keypoints[sel].copy()
        kp[..., :2] += 0.5          # PoseResult uses COCO pixel indices; the official output does not shift
        add(f"img{b}_final_boxes_xyxy", res.boxes[sel], ref[f"img{b}_final_boxes_xyxy"], tol_px)
        add_rel(f"img{b}_final_scores", res.scores[sel], ref[f"img{b}_final_scores"])
        add(f"img{b}_final_keypoints_xy", kp[..., :2], ref[f"img{b}_final_keypoints"][..., :2], tol_px)
        add_rel(f"img{b}_final_keypoints_score", kp[..., 2], ref[f"img{b}_final_keypoints"][..., 2])
    if (folder / "train_loss.npz").is_file():
        rows += training_check(model, folder, batch)
    return rows


def reference_training_targets(folder: Path) -> list[dict]:
    """The synthetic ground truth of ``train_loss.npz`` as our training targets."""
    z = np.load(folder / "train_loss.npz")
    sizes = np.load(folder / "inputs.npz")["image_sizes_hw"]
    targets = []
    for b in range(len(sizes)):
        targets.append({"boxes": torch.from_numpy(z[f"gt_img{b}_boxes_xyxy"]).float(),
                        "keypoints": torch.from_numpy(z[f"gt_img{b}_keypoints"]).float(),
                        "labels": torch.zeros(len(z[f"gt_img{b}_boxes_xyxy"]), dtype=torch.long),
                        "image_size": torch.tensor(sizes[b], dtype=torch.long)})
    return targets


def training_check(model, folder: Path, batch: dict) -> list[tuple[str, float, float]]:
    """Training-mode losses and per-stage matches against the official ``train_loss.npz``."""
    import copy

    z = np.load(folder / "train_loss.npz")
    m = copy.deepcopy(model).train()
    targets = reference_training_targets(folder)
    matches: list = []
    orig = m.matcher.forward

    def spy(*a, **k):
        r = orig(*a, **k)
        matches.append(r)
        return r

    m.matcher.forward = spy
    with torch.no_grad():
        losses = m(batch["images"], targets)
    rows = []
    for key in sorted(k for k in z.files if k.startswith("loss__")):
        name = key[len("loss__"):]
        ref = float(z[key])
        ours = float(losses[name]) if name in losses else float("inf")
        rows.append((f"train_{name} (rel)", abs(ours - ref) / max(abs(ref), 1e-12), 1e-4))
    for s, per_image in enumerate(matches):
        for b, (pi, gi) in enumerate(per_image):
            rp, rg = z[f"match_stage{s}_img{b}_pred"], z[f"match_stage{s}_img{b}_gt"]
            if len(rp) != len(pi):
                diff = float(max(len(rp), len(pi)))
            else:
                diff = float((pi.numpy() != rp).sum() + (gi.numpy() != rg).sum())
            rows.append((f"match_stage{s}_img{b}", diff, 0.0))
    return rows
