"""Official Poseur checkpoints (aim-uofa/Poseur, mmpose 0.x fork) -> regpose.

``convert_state_dict`` renames every official key (``../shared/reference/poseur/manifest_*.tsv``) to ours and
reshapes EMSDA's value projection; ``config_from_official`` reads the official config vocabulary;
``reference_check`` runs a converted reduced model on an official reference folder and compares every array.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from ..codecs.topdown_regression import TopDownRegressionTransform
from ..config import from_dict
from ..data.config import DataConfig
from ..data.keypoints import KeypointMeta, get_meta
from ..data.transforms import IMAGENET_STD
from ..errors import CheckpointError, RegposeError
from ..models.poseur import Poseur, PoseurConfig
from ..ops import rescore
from ..structures import PoseResult
from .official import load_npz_state_dict

__all__ = ["is_official", "convert_state_dict", "config_from_official", "reference_check", "build_reference_model",
           "UNUSED_OFFICIAL_KEYS"]

#: official keys that have no counterpart in our model (none: every key is consumed)
UNUSED_OFFICIAL_KEYS: tuple[str, ...] = ()

_HEAD = "keypoint_head."
_TRANSFORMER = _HEAD + "transformer."

# (official regex, our replacement); the first match wins. Applied to the whole key.
_RULES: list[tuple[str, str]] = [
    (r"^backbone\.(.+)$", r"backbone.body.\1"),                                  # mmpose ResNet / HRNet == timm names
    (r"^neck\.convs\.(\d+)\.(conv|gn)\.(.+)$", r"neck.convs.\1.\2.\3"),
    (r"^keypoint_head\.transformer\.level_embeds$", r"level_embed"),
    (r"^keypoint_head\.transformer\.fc_(coord|sigma)\.linear\.(weight|bias)$", r"coarse_head.fc_\1.linear.\2"),
    (r"^keypoint_head\.transformer\.pos_trans\.(weight|bias)$", r"query_proj.\1"),
    (r"^keypoint_head\.transformer\.pos_trans_norm\.(weight|bias)$", r"query_norm.\1"),
    (r"^keypoint_head\.transformer\.pos_embed\.weight$", r"class_embed.weight"),
    (r"^keypoint_head\.transformer\.decoder\.layers\.(\d+)\.attentions\.0\.attn\.(.+)$", r"layers.\1.self_attn.\2"),
    (r"^keypoint_head\.transformer\.decoder\.layers\.(\d+)\.attentions\.1\."
     r"(sampling_offsets|attention_weights|output_proj|value_proj)\.(weight|bias)$", r"layers.\1.cross_attn.\2.\3"),
    (r"^keypoint_head\.transformer\.decoder\.layers\.(\d+)\.attentions\.1\.value_proj_(weight|bias)\.weight$",
     r"layers.\1.cross_attn.value_proj_\2"),
    (r"^keypoint_head\.transformer\.decoder\.layers\.(\d+)\.ffns\.0\.layers\.0\.0\.(weight|bias)$", r"layers.\1.linear1.\2"),
    (r"^keypoint_head\.transformer\.decoder\.layers\.(\d+)\.ffns\.0\.layers\.1\.(weight|bias)$", r"layers.\1.linear2.\2"),
    (r"^keypoint_head\.transformer\.decoder\.layers\.(\d+)\.norms\.0\.(weight|bias)$", r"layers.\1.norm1.\2"),
    (r"^keypoint_head\.transformer\.decoder\.layers\.(\d+)\.norms\.1\.(weight|bias)$", r"layers.\1.norm2.\2"),
    (r"^keypoint_head\.transformer\.decoder\.layers\.(\d+)\.norms\.2\.(weight|bias)$", r"layers.\1.norm3.\2"),
    (r"^keypoint_head\.enc_flow\.(.+)$", r"coarse_flow.\1"),
    (r"^keypoint_head\.dec_flow\.(.+)$", r"decoder_flow.\1"),
    (r"^keypoint_head\.fc_coord_branches\.(\d+)\.([024])\.(weight|bias)$", r"coord_branches.\1.\2.\3"),
    (r"^keypoint_head\.fc_coord_output_branches\.(\d+)\.([024])\.(weight|bias)$", r"coord_output_branches.\1.\2.\3"),
    (r"^keypoint_head\.fc_sigma_branches\.(\d+)\.([01])\.(weight|bias)$", r"sigma_branches.\1.\2.\3"),
    (r"^keypoint_head\.fc_sigma_branches\.(\d+)\.2\.linear\.(weight|bias)$", r"sigma_branches.\1.2.linear.\2"),
]
_COMPILED = [(re.compile(p), r) for p, r in _RULES]


def _rename(key: str) -> str | None:
    for pattern, repl in _COMPILED:
        if pattern.match(key):
            return pattern.sub(repl, key)
    return None


def is_official(state: dict) -> bool:
    """An official Poseur state dict: mmpose's ``keypoint_head.transformer.*`` (ours has no ``keypoint_head``)."""
    return any(k.startswith(_TRANSFORMER) for k in state)


def convert_state_dict(official: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official Poseur state dict -> ours. Every key is consumed; an unknown key is an error naming it."""
    ours: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in official.items():
        if key.startswith("module."):
            key = key[len("module."):]
        if key in UNUSED_OFFICIAL_KEYS:
            continue
        new = _rename(key)
        if new is None:
            unknown.append(key)
            continue
        if new.endswith("cross_attn.value_proj_weight"):
            # Official code: an Embedding (M*C, C/M) read as (M, C, C/M), M = 8 heads hard-coded (spec 2.5)
            m_c, d = value.shape
            value = value.reshape(8, m_c // 8, d)
        ours[new] = value
    if unknown:
        raise CheckpointError(f"official Poseur checkpoint: {len(unknown)} unknown keys, e.g. {unknown[:3]}")
    return ours


# ----------------------------------------------------------------------------------------------------------
# Official config vocabulary -> our PoseurConfig fields
# ----------------------------------------------------------------------------------------------------------
def _backbone_from_official(bb: dict) -> tuple[str, dict]:
    kind = bb.get("type")
    if kind in ("ResNet", "ResNetV1d"):
        if kind == "ResNetV1d" or bb.get("deep_stem") or bb.get("avg_down"):
            raise RegposeError("official Poseur config: only plain ResNet (style 'pytorch') backbones are supported")
        depth = int(bb.get("depth", 50))
        kwargs: dict = {}
        stem, base = int(bb.get("stem_channels", 64)), int(bb.get("base_channels", 64))
        if stem != 64:
            kwargs["stem_width"] = stem
        if base != 64:
            kwargs["channels"] = [base, base * 2, base * 4, base * 8]
        return f"resnet{depth}", kwargs
    if kind == "HRNet":
        width = int(bb["extra"]["stage4"]["num_channels"][0])
        return f"hrnet_w{width}", {}
    if kind == "MobileNetV2":
        if float(bb.get("widen_factor", 1.0)) != 1.0:
            raise RegposeError("official Poseur config: only MobileNetV2 widen_factor 1.0 is supported")
        out = tuple(bb.get("out_indices", (7,)))
        if out not in ((1, 2, 4, 7), (1, 2, 4, 6)):
            raise RegposeError(f"official Poseur config: MobileNetV2 out_indices {out} are not supported")
        # mmcls layers 2, 3, 5 = timm levels 1, 2, 3; index 7 = the 1x1 head conv (timm conv_head / bn2)
        return "mobilenetv2_100", {"head_level": True} if out[-1] == 7 else {}
    raise RegposeError(f"official Poseur config: unsupported backbone type {kind!r}")


def config_from_official(cfg_json: dict) -> dict:
    """``config.json`` (``{"model": <official mmpose model dict>, ...}`` or the model dict itself) -> overrides of
    :class:`regpose.models.poseur.PoseurConfig`."""
    model = cfg_json.get("model", cfg_json)
    head = model["keypoint_head"]
    tr = head["transformer"]
    dec = tr["decoder"]
    layer = dec["transformerlayers"]
    self_attn, cross_attn = layer["attn_cfgs"][0], layer["attn_cfgs"][1]
    backbone, kwargs = _backbone_from_official(model["backbone"])
    cross_type = cross_attn.get("type", "MultiScaleDeformableAttention_post_value")
    if cross_type not in ("MultiScaleDeformableAttention_post_value", "MultiScaleDeformableAttention"):
        raise RegposeError(f"official Poseur config: unsupported cross-attention {cross_type!r}")
    out = {
        "backbone": {"name": backbone, "kwargs": kwargs},
        "embed_dim": int(tr.get("embed_dims", model.get("neck", {}).get("out_channels", 256))),
        "num_decoder_layers": int(dec["num_layers"]),
        "self_attention": "self_attn" in layer.get("operation_order", ["self_attn"]),
        "self_attn_heads": int(self_attn.get("num_heads", 8)),
        "cross_attention": "emsda" if cross_type.endswith("post_value") else "msda",
        "num_heads": int(cross_attn.get("num_heads", 8)),
        "num_points": int(cross_attn.get("num_points", 4)),
        "feature_levels": list(range(1, 1 + int(cross_attn.get("num_levels", 4)))),
        "ffn_dim": int(layer.get("feedforward_channels", 1024)),
        "dropout": float(layer.get("ffn_dropout", 0.1)),
        "num_noise_groups": int(tr.get("num_noise_sample", cfg_json.get("num_noise_sample_default", 3))),
        "noise_points_per_group": int(tr.get("num_noise_verts", cfg_json.get("num_noise_verts_default", 4))),
        "noise_variance": float(tr.get("noise_sigma", cfg_json.get("noise_sigma_default", 0.2))),
    }
    if "filp_fuse_type" in model:
        out["flip_fusion"] = model["filp_fuse_type"]
    if out["cross_attention"] == "emsda" and out["num_heads"] != 8:
        raise RegposeError("official Poseur config: EMSDA hard-codes 8 heads in its value projection")
    return out


def official_layout(cfg_json: dict) -> KeypointMeta:
    """The keypoint layout of an official Poseur config: the released models are COCO-17 (``num_joints`` 17 and
    COCO's flip pairs); anything else is refused rather than guessed."""
    head = cfg_json.get("model", cfg_json)["keypoint_head"]
    coco = get_meta("coco")
    pairs = [list(p) for p in cfg_json.get("flip_pairs", coco.flip_pairs)]
    if int(head.get("num_joints", 17)) != coco.num_keypoints or pairs != [list(p) for p in coco.flip_pairs]:
        raise RegposeError(f"official Poseur config: num_joints {head.get('num_joints')} with flip pairs {pairs}; "
                           f"the released models (and this converter) are COCO-17")
    return coco


# ----------------------------------------------------------------------------------------------------------
# Reference check
# ----------------------------------------------------------------------------------------------------------
def build_reference_model(folder: str | Path):
    """Our Poseur built from a reference folder's official config with its converted ``weights.npz`` loaded."""
    folder = Path(folder)
    cfg_json = json.loads((folder / "config.json").read_text())
    model_cfg = from_dict(PoseurConfig, config_from_official(cfg_json), "model")
    model = Poseur(model_cfg, official_layout(cfg_json))
    state = convert_state_dict(load_npz_state_dict(folder / "weights.npz"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{folder}/weights.npz: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model.eval(), cfg_json


def _err(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf")
    return float(np.abs(a - b).max()) if a.size else 0.0


def _reference_transform(cfg_json: dict):
    """Our top-down test transform for the reference folder's input size and padding."""
    w, h = cfg_json.get("input_size_wh", [192, 256])
    data = DataConfig(input_size=(int(w), int(h)))
    data.augment.topdown.padding = float(cfg_json.get("bbox_padding", 1.25))
    return TopDownRegressionTransform(data, train=False)


@torch.no_grad()
def reference_check(folder: str | Path) -> list[tuple[str, float, float]]:
    """(array, max abs error, tolerance) for every array of ``outputs.npz`` (tolerances from the folder README:
    2e-5 normalised coordinates / sigmas / scores, 1e-4 hidden states, 5e-3 px image coordinates)."""
    from types import SimpleNamespace


    folder = Path(folder)
    model, cfg_json = build_reference_model(folder)
    inp, ref = np.load(folder / "inputs.npz"), np.load(folder / "outputs.npz")
    images = torch.from_numpy(inp["image"])
    rows: list[tuple[str, float, float]] = []

    def add(name, ours, tol):
        if name in ref.files:
            rows.append((name, _err(ours, ref[name]), tol))

    for prefix, x in (("", images), ("flipped_", images.flip(3))):
        out = model.forward_all(x, 1, all_layers=True)
        if not prefix:
            feats = model.backbone(x)
            add("backbone_out3", feats[-1], 1e-4)
            add("neck_out3", model.neck(feats)[-1], 1e-4)
            add("spatial_shapes", np.asarray(out["spatial_shapes"]), 0)
            starts = np.cumsum([0] + [h * w for h, w in out["spatial_shapes"]])[:-1]
            add("level_start_index", starts, 0)
        add(prefix + "coarse_mu", out["coarse_mu"], 2e-5)
        add(prefix + "coarse_sigma", out["coarse_sigma"], 2e-5)
        add(prefix + "coarse_score", (1 - out["coarse_sigma"]).mean(-1, keepdim=True), 2e-5)
        add(prefix + "dec_mu", torch.stack(out["mu"]), 2e-5)
        add(prefix + "dec_sigma", torch.stack(out["sigma"]), 2e-5)
        add(prefix + "dec_score", (1 - out["sigma"][-1]).mean(-1, keepdim=True), 2e-5)
        add(prefix + "dec_hidden", torch.stack(out["hidden"]), 1e-4)
        add(prefix + "init_reference", out["init_reference"], 2e-5)
        add(prefix + "inter_references", torch.stack(out["references"]), 2e-5)

    # Full top-down pipeline: box -> centre/scale -> affine crop -> network -> image pixels, flip test with each
    # fusion mode, rle rescoring. The crops come from our own transform and must equal the official input.
    metas, crops = [], []
    transform = _reference_transform(cfg_json)
    for i in range(len(images)):
        x, y, w, h = inp["bbox_xywh"][i].astype(np.float64)
        raw = {"image": inp["raw_image"][i], "image_id": i, "file_name": "", "sample_index": i,
               "orig_size": inp["raw_image"][i].shape[:2], "keypoints": np.zeros((0, model.num_keypoints, 3)),
               "boxes": np.zeros((0, 4)), "box_xywh": np.array([x, y, w, h]), "box": np.array([x, y, x + w, y + h]),
               "box_score": float(inp["bbox_score"][i]), "person_index": -1}
        sample = transform(raw)
        crops.append(sample["image"])
        metas.append(sample["meta"])
    # The crop is compared within one grey level: OpenCV's uint8 warpAffine rounds differently on different SIMD
    # paths (measured on an AMD EPYC: one level in some pixels, reference README "Across CPUs").

    one_level = float(1.0 / (255.0 * min(IMAGENET_STD))) + 1e-6
    rows.append(("image (top-down crop + normalisation, one grey level)", _err(torch.stack(crops), inp["image"]),
                 one_level))
    center = np.stack([m["center"] for m in metas]).astype(np.float64)
    scale = np.stack([m["scale"] for m in metas]).astype(np.float64)
    rows.append(("center", _err(center, inp["center"]), 1e-4))
    rows.append(("scale", _err(scale, inp["scale"]), 1e-6))
    # The network and decoding run on the reference's own crop, so they are judged exactly (README tolerances).
    batch = {"images": torch.from_numpy(inp["image"]), "metas": metas}
    own_crop = {"images": torch.stack(crops), "metas": metas}
    for mode in ("noflip", "flip_default", "flip_type1", "flip_type2"):
        model.cfg.flip_fusion = mode.split("_")[-1] if mode != "noflip" else model.cfg.flip_fusion
        results = model.predict(batch, SimpleNamespace(flip=mode != "noflip"))
        merged = PoseResult.concat(results, model.num_keypoints)
        kp = merged.keypoints
        if f"preds_{mode}" in ref.files:
            rows.append((f"preds_{mode}[xy px]", _err(kp[..., :2], ref[f"preds_{mode}"][..., :2]), 5e-3))
            rows.append((f"preds_{mode}[score]", _err(kp[..., 2], ref[f"preds_{mode}"][..., 2]), 2e-5))
            # End to end from the crop made here: a one-grey-level crop difference moves these random-weight
            # keypoints by up to 0.56 px (reference README, AMD EPYC), so 1 px covers it; a wrong crop moves them
            # by whole pixels to tens of pixels.
            own = PoseResult.concat(model.predict(own_crop, SimpleNamespace(flip=mode != "noflip")),
                                    model.num_keypoints)
            rows.append((f"preds_{mode}[xy px, crop made here]", _err(own.keypoints[..., :2],
                                                                     ref[f"preds_{mode}"][..., :2]), 1.0))
        if f"boxes_{mode}" in ref.files:
            boxes = np.concatenate([center, scale, merged.extras["area"][:, None], merged.extras["box_score"][:, None]], 1)
            rows.append((f"boxes_{mode}", _err(boxes, ref[f"boxes_{mode}"]), 1e-2))
        add(f"instance_score_rle_{mode}", rescore(merged).scores, 2e-5)
    return rows
