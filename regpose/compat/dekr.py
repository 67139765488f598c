"""Official DEKR checkpoints (HRNet/DEKR @ 7a30313) -> regpose, and the check against the official reference outputs.

Key mapping (official -> ours):
  conv1/bn1/conv2/bn2/layer1/transition*/stage*      -> backbone.hrnet.body.*       (timm HRNet: same names)
  transition_heatmap.*                               -> heatmap_head.transition.*
  head_heatmap.0.{i}.* / head_heatmap.1.*            -> heatmap_head.blocks.{i}.* / heatmap_head.final.*
  transition_offset.*                                -> offset_head.transition.*
  offset_feature_layers.{j}.{b}.{transform_matrix_conv,translation_conv,adapt_conv,bn}.*
                                                     -> offset_head.blocks.{b}.* stacked over keypoints j
  offset_feature_layers.{j}.{b}.regular_matrix       -> consumed: checked to be the 3x3 grid (a constant here)
  offset_final_layer.{j}.*                           -> offset_head.final.* stacked over j
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from ..config import ConfigError
from ..errors import CheckpointError

__all__ = ["convert_state_dict", "convert_rescore_state_dict", "config_from_official", "official_test_options",
           "reference_check", "build_from_official"]

_HEADS = ("transition_heatmap.", "head_heatmap.", "transition_offset.", "offset_feature_layers.",
          "offset_final_layer.")
_ADAPT = re.compile(r"^offset_feature_layers\.(\d+)\.(\d+)\.(.+)$")
_FINAL = re.compile(r"^offset_final_layer\.(\d+)\.(weight|bias)$")
_ADAPT_MAP = {"transform_matrix_conv.weight": "adapt_conv.transform_matrix_conv.weight",
              "transform_matrix_conv.bias": "adapt_conv.transform_matrix_conv.bias",
              "translation_conv.weight": "adapt_conv.translation_conv.weight",
              "translation_conv.bias": "adapt_conv.translation_conv.bias",
              "adapt_conv.weight": "adapt_conv.weight",
              "bn.weight": "bn.weight", "bn.bias": "bn.bias", "bn.running_mean": "bn.running_mean",
              "bn.running_var": "bn.running_var", "bn.num_batches_tracked": "bn.num_batches_tracked"}


def convert_state_dict(official: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official pose-net state dict -> ours. Every key is consumed; anything unexpected is an error."""
    from ..models.layers.adaptive_conv import REGULAR_GRID

    ours: dict[str, torch.Tensor] = {}
    stacks: dict[str, dict[int, torch.Tensor]] = {}
    unknown = []
    for key, value in official.items():
        key = key[len("module."):] if key.startswith("module.") else key
        if not key.startswith(_HEADS):
            ours[f"backbone.hrnet.body.{key}"] = value
        elif key.startswith("transition_heatmap."):
            ours["heatmap_head.transition." + key[len("transition_heatmap."):]] = value
        elif key.startswith("head_heatmap.0."):
            ours["heatmap_head.blocks." + key[len("head_heatmap.0."):]] = value
        elif key.startswith("head_heatmap.1."):
            ours["heatmap_head.final." + key[len("head_heatmap.1."):]] = value
        elif key.startswith("transition_offset."):
            ours["offset_head.transition." + key[len("transition_offset."):]] = value
        elif m := _ADAPT.match(key):
            joint, block, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            if rest == "regular_matrix":
                if tuple(value.shape) != (2, 9) or not torch.equal(value.float().cpu(), REGULAR_GRID):
                    raise CheckpointError(f"{key}: expected the regular 3x3 grid buffer (2x9), got {tuple(value.shape)}")
                continue
            if rest not in _ADAPT_MAP:
                unknown.append(key)
                continue
            stacks.setdefault(f"offset_head.blocks.{block}.{_ADAPT_MAP[rest]}", {})[joint] = value
        elif m := _FINAL.match(key):
            stacks.setdefault(f"offset_head.final.{m.group(2)}", {})[int(m.group(1))] = value
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"official DEKR checkpoint: {len(unknown)} unexpected keys, e.g. {unknown[:3]}")
    for name, per_joint in stacks.items():
        joints = sorted(per_joint)
        if joints != list(range(len(joints))):
            raise CheckpointError(f"official DEKR checkpoint: {name} misses keypoint branches (have {joints})")
        if name.endswith("num_batches_tracked"):   # one counter per official BN, one BN here: they agree in practice
            ours[name] = torch.stack([per_joint[j] for j in joints]).max()
        else:
            ours[name] = torch.cat([per_joint[j] for j in joints], dim=0)
    return ours


def convert_rescore_state_dict(official: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official PredictOKSNet state dict -> ours (same names l1/l2/l3; checked to be complete and consistent)."""
    expected = {f"l{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")}
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in official.items()}
    if set(state) != expected:
        raise CheckpointError(f"official rescore net: expected keys {sorted(expected)}, got {sorted(state)}")
    h, f = state["l1.weight"].shape
    if tuple(state["l2.weight"].shape) != (h, h) or tuple(state["l3.weight"].shape) != (1, h):
        raise CheckpointError(f"official rescore net: inconsistent layer shapes "
                              f"{[tuple(state[f'l{i}.weight'].shape) for i in (1, 2, 3)]}")
    if f not in (74, 59):
        raise CheckpointError(f"official rescore net: {f} input features, expected 74 (COCO) or 59 (CrowdPose)")
    return {k: v.float() for k, v in state.items()}


_DATASETS = {"coco_kpt": "coco", "coco": "coco", "crowd_pose_kpt": "crowdpose", "crowdpose": "crowdpose",
             "crowd_pose": "crowdpose"}
_TEST_KEYS = {"KEYPOINT_THRESHOLD": "keypoint_threshold", "POOL_THRESHOLD1": "pool_threshold1",
              "POOL_THRESHOLD2": "pool_threshold2", "NMS_THRE": "nms_threshold", "NMS_NUM_THRE": "nms_num_threshold",
              "DECREASE": "decrease", "MATCH_HMP": "match_hmp", "ADJUST_THRESHOLD": "adjust_threshold",
              "MAX_ABSORB_DISTANCE": "max_absorb_distance", "GUASSIAN_KERNEL": "gaussian_kernel"}
_DATASET_KEYS = {"INPUT_SIZE": "test_input_size", "MAX_NUM_PEOPLE": "max_num_people", "SIGMA": "sigma",
                 "CENTER_SIGMA": "center_sigma", "BG_WEIGHT": "bg_weight", "OFFSET_RADIUS": "offset_radius"}
_TIMM_WIDTHS = {32: "hrnet_w32", 48: "hrnet_w48"}


def _uniform(values, what: str) -> int:
    if len(set(values)) != 1:
        raise ConfigError(f"official config {what}: per-branch block counts {values} differ; only uniform supported")
    return int(values[0])


def config_from_official(cfg_json: dict) -> dict:
    """Official yacs config (as a dict) -> overrides of our ``model`` section (DEKRConfig fields)."""
    model = cfg_json.get("MODEL", {})
    spec = model.get("SPEC", {})
    stages = spec.get("STAGES", {})
    out: dict = {}
    if stages:
        if stages.get("NUM_STAGES", 3) != 3 or any(b != "BASIC" for b in stages.get("BLOCK", ["BASIC"])) or \
                any(f != "SUM" for f in stages.get("FUSE_METHOD", ["SUM"])):
            raise ConfigError("official config MODEL.SPEC.STAGES: only 3 BASIC / SUM stages (HRNet) are supported")
        channels = [int(c) for c in stages["NUM_CHANNELS"][-1]]
        name = _TIMM_WIDTHS.get(channels[0], "hrnet_w32")
        out["backbone"] = {"name": name}
        if channels != [channels[0] * 2 ** i for i in range(4)] or channels[0] not in _TIMM_WIDTHS:
            out["hrnet_channels"] = channels
        for s, chs in enumerate(stages["NUM_CHANNELS"]):
            if [int(c) for c in chs] != channels[: s + 2]:
                raise ConfigError(f"official config STAGES.NUM_CHANNELS[{s}]: {chs} is not a prefix of {channels}")
        modules = [int(m) for m in stages.get("NUM_MODULES", [1, 4, 3])]
        if modules != [1, 4, 3]:
            out["hrnet_modules"] = modules
        blocks = [_uniform(b, f"STAGES.NUM_BLOCKS[{i}]") for i, b in enumerate(stages.get("NUM_BLOCKS", [[4]] * 3))]
        if blocks != [4, 4, 4]:
            out["hrnet_blocks"] = blocks
    hh = spec.get("HEAD_HEATMAP", {})
    if hh:
        if hh.get("BLOCK", "BASIC") != "BASIC":
            raise ConfigError(f"official config HEAD_HEATMAP.BLOCK: {hh['BLOCK']!r} unsupported (BASIC only)")
        out["head_heatmap_channels"] = int(hh.get("NUM_CHANNELS", 32))
        out["head_heatmap_blocks"] = int(hh.get("NUM_BLOCKS", 1))
        out["head_heatmap_dilation"] = int(hh.get("DILATION_RATE", 1))
    ho = spec.get("HEAD_OFFSET", {})
    if ho:
        if ho.get("BLOCK", "ADAPTIVE") != "ADAPTIVE" or int(ho.get("DILATION_RATE", 1)) != 1:
            raise ConfigError("official config HEAD_OFFSET: only ADAPTIVE blocks with DILATION_RATE 1 are supported")
        out["offset_channels_per_keypoint"] = int(ho.get("NUM_CHANNELS_PERKPT", 15))
        out["offset_blocks"] = int(ho.get("NUM_BLOCKS", 2))
    if "FINAL_CONV_KERNEL" in spec:
        out["final_conv_kernel"] = int(spec["FINAL_CONV_KERNEL"])
    if model.get("PRETRAINED"):
        out.setdefault("backbone", {})["weights"] = str(model["PRETRAINED"])
    for k, ours in _DATASET_KEYS.items():
        if k in cfg_json.get("DATASET", {}):
            out[ours] = cfg_json["DATASET"][k]
    for k, ours in _TEST_KEYS.items():
        if k in cfg_json.get("TEST", {}):
            out[ours] = cfg_json["TEST"][k]
    loss = cfg_json.get("LOSS", {})
    if "HEATMAPS_LOSS_FACTOR" in loss:
        out["heatmap_loss_factor"] = float(loss["HEATMAPS_LOSS_FACTOR"])
    if "OFFSETS_LOSS_FACTOR" in loss:
        out["offset_loss_factor"] = float(loss["OFFSETS_LOSS_FACTOR"])
    if "HIDDEN_LAYER" in cfg_json.get("RESCORE", {}):
        out["rescore_hidden"] = int(cfg_json["RESCORE"]["HIDDEN_LAYER"])
    return out


def official_test_options(cfg_json: dict) -> dict:
    """Official TEST.FLIP_TEST / SCALE_FACTOR -> our generic ``test`` section."""
    t = cfg_json.get("TEST", {})
    out = {}
    if "FLIP_TEST" in t:
        out["flip"] = bool(t["FLIP_TEST"])
    if "SCALE_FACTOR" in t:
        out["scales"] = [float(s) for s in t["SCALE_FACTOR"]]
    return out


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def build_from_official(cfg_json: dict, weights: dict[str, torch.Tensor] | None = None):
    """Our Config + DEKR model (eval mode) for an official config, with converted official weights if given."""
    from ..config import load_config
    from ..models import build_model

    fmt = _DATASETS.get(str(cfg_json.get("DATASET", {}).get("DATASET", "coco_kpt")))
    if fmt is None:
        raise ConfigError(f"official config DATASET.DATASET: unknown {cfg_json['DATASET']['DATASET']!r}")
    raw = {"method": "dekr", "model": config_from_official(cfg_json), "data": {"format": fmt},
           "test": official_test_options(cfg_json), "name": "dekr_official"}
    cfg = load_config(raw)
    model = build_model(cfg)
    if weights is not None:
        missing, unexpected = model.load_state_dict(convert_state_dict(weights), strict=False)
        if missing or unexpected:
            raise CheckpointError(f"converted DEKR weights do not fit: missing {missing[:3]}, unexpected "
                                  f"{unexpected[:3]}")
    return cfg, model.eval()


# ----------------------------------------------------------------------------------------------------------
# Reference check against ../shared/reference/dekr/tiny (tolerances from its README)
# ----------------------------------------------------------------------------------------------------------
_EXACT = {"image_resized_uint8", "nms_keep_inds", "num_people", "gauss_fit_calls", "gauss_fit_ok", "base_size_wh",
          "center_xy"}
_POSE_ARRAYS = {"proposals", "nms_poses", "final_poses", "matched_poses"}


def _tolerance(leaf: str, variant: str) -> float:
    if leaf in _EXACT:
        return 0.0
    if leaf == "scale_wh_div200":
        return 1e-9
    if leaf in ("posemap_merged", "proposals", "nms_poses"):
        return 1e-3
    if leaf in ("final_poses", "matched_poses"):
        return 0.1 if variant == "flip_match" else 2e-3
    if leaf in ("nms_scores", "final_scores_rescored"):
        return 1e-5
    return 1e-4   # raw heatmap / offset, debug taps, merged / averaged heatmaps, rescore features


def _compare(name: str, ours, ref: np.ndarray, tol: float, rows: list) -> None:
    ours = np.asarray(ours)
    leaf = name.split("/")[-1]
    if ours.shape != ref.shape:
        rows.append((f"{name} (shape {ours.shape} vs {ref.shape})", float("inf"), tol))
        return
    if leaf in _POSE_ARRAYS and ref.ndim == 3 and ref.shape[-1] == 3:
        err_xy = float(np.abs(ours[..., :2].astype(np.float64) - ref[..., :2]).max()) if ref.size else 0.0
        err_s = float(np.abs(ours[..., 2].astype(np.float64) - ref[..., 2]).max()) if ref.size else 0.0
        rows.append((f"{name}[xy]", err_xy, tol))
        rows.append((f"{name}[score]", err_s, 1e-5))
        return
    err = float(np.abs(ours.astype(np.float64) - ref.astype(np.float64)).max()) if ref.size else 0.0
    rows.append((name, err, tol))


def _raw_forward(model, image: torch.Tensor) -> dict[str, np.ndarray]:
    """Raw outputs plus the official debug taps (sample 0): backbone concat, joint 0's first adaptive conv."""
    from ..models.layers.adaptive_conv import affine_deform_offsets

    taps: dict[str, torch.Tensor] = {}
    p = model.offset_head.channels_per_keypoint
    block0 = model.offset_head.blocks[0].adapt_conv

    def grab(name):
        def hook(_m, inp, out):
            taps[name] = (inp[0], out)
        return hook

    handles = [model.backbone.register_forward_hook(grab("backbone")),
               block0.register_forward_hook(grab("adapt"))]
    try:
        with torch.no_grad():
            heatmap, offset = model(image)
            x, out = taps["adapt"]
            offsets = affine_deform_offsets(block0.transform_matrix_conv(x), block0.translation_conv(x), block0.groups)
    finally:
        for h in handles:
            h.remove()
    return {"heatmap": heatmap.numpy(), "offset": offset.numpy(),
            "dbg/backbone_concat_n0": taps["backbone"][1][:1].numpy(),
            "dbg/joint0_block0_dcn_input_n0": x[:1, :p].numpy(),
            "dbg/joint0_block0_dcn_offset_n0": offsets[:1, :18].numpy(),
            "dbg/joint0_block0_dcn_output_n0": out[:1, :p].numpy()}


def reference_check(folder: str | Path) -> list[tuple[str, float, float]]:
    """Convert the folder's official weights, run its inputs through our network and every inference variant of its
    config.json, and compare with outputs.npz: rows (array, max abs error, tolerance)."""
    import dataclasses

    from ..models.dekr import PoseRescorer, map_poses, official_test_resize, rescore_features, run_pipeline
    from .official import load_npz_state_dict

    folder = Path(folder)
    cfg_json = json.loads((folder / "config.json").read_text())
    cfg, model = build_from_official(cfg_json, load_npz_state_dict(folder / "weights.npz"))
    inputs = np.load(folder / "inputs.npz")
    ref = np.load(folder / "outputs.npz")
    rows: list[tuple[str, float, float]] = []
    raw = _raw_forward(model, torch.from_numpy(inputs["image"]))
    for name, value in raw.items():
        _compare(name, value, ref[name], _tolerance(name, ""), rows)

    rescorer = None
    if cfg_json.get("RESCORE", {}).get("VALID", False) and (folder / "rescore_weights.npz").is_file():
        rescorer = PoseRescorer.from_file(folder / "rescore_weights.npz")
    image = inputs["image_rgb"]
    h, w = image.shape[:2]
    for variant, over in cfg_json.get("_variants", {}).items():
        vcfg = dataclasses.replace(model.cfg, **config_from_official(over))
        vtest = {"flip": cfg.test.flip, "scales": cfg.test.scales, **official_test_options(over)}
        trace: dict = {}
        with torch.no_grad():
            poses, scores = run_pipeline(model, image, vcfg, model.flip_index, model.input_size, vtest["flip"],
                                         vtest["scales"], trace=trace)
        (wb, hb), _, inv = official_test_resize(h, w, model.input_size, 1.0)
        alpha = 1.0 / inv[0, 0]
        trace["base_size_wh"] = np.array([wb, hb])
        trace["center_xy"] = np.array([int(w / 2.0 + 0.5), int(h / 2.0 + 0.5)], dtype=np.float64)
        trace["scale_wh_div200"] = np.array([wb / alpha / 200.0, hb / alpha / 200.0])
        final = map_poses(poses, inv)
        trace["final_poses"] = final
        trace["num_people"] = np.array(len(final))
        if rescorer is not None:
            trace["rescore_features"] = rescore_features(final)
            trace["final_scores_rescored"] = rescorer(final, scores)
        for key in ref.files:
            if not key.startswith(variant + "/"):
                continue
            leaf = key[len(variant) + 1:]
            if leaf not in trace:
                rows.append((f"{key} (not produced)", float("inf"), 0.0))
                continue
            _compare(key, trace[leaf], ref[key], _tolerance(key.split("/")[-1], variant), rows)
    return rows
