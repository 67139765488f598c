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

from ..codecs.heatmap_offset import map_poses, official_test_resize
from ..config import load_config
from ..data.collate import collate
from ..data.datasets import ignore_mask, load_annotation_file, raw_sample
from ..data.transforms import BottomUpRandomAffine, HorizontalFlip, dekr_affine_matrix, to_tensor_normalize
from ..engine.schedule import build_optimizer, lr_factor, set_lr
from ..errors import CheckpointError, ConfigError, RegposeError
from ..models import build_model
from ..models.base import total_loss
from ..models.dekr import PoseRescorer, heatmap_loss, offset_loss, rescore_features, run_pipeline
from ..models.layers.adaptive_conv import REGULAR_GRID, affine_deform_offsets
from ..models.registry import get_method
from .official import load_npz_state_dict

__all__ = ["is_official", "convert_state_dict", "convert_rescore_state_dict", "config_from_official", "official_test_options",
           "official_data_options", "official_train_options", "reference_check", "train_step_check",
           "build_from_official"]

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


def is_official(state: dict) -> bool:
    """An official DEKR pose-net state dict: per-keypoint offset branches ``offset_final_layer.<j>.*`` (ours stacks
    them into ``offset_head.final``), with or without DataParallel's ``module.`` prefix."""
    return any(_FINAL.match(k[len("module."):] if k.startswith("module.") else k) for k in state)


def convert_state_dict(official: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official pose-net state dict -> ours. Every key is consumed; anything unexpected is an error."""
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


def _stages_from_official(stages: dict) -> dict:
    """Official MODEL.SPEC.STAGES -> our hrnet_* fields. The official code builds any NUM_MODULES, per-branch
    NUM_BLOCKS and per-stage NUM_CHANNELS; FUSE_METHOD is stored but never read (the module always sums), so any
    value builds the same network. Not supported: another number of stages / branches (the official head reads
    exactly four branches and timm's trunk has three stages) and BOTTLENECK stages (timm widens them differently
    from the official code, which cannot run one as the last stage)."""
    if int(stages.get("NUM_STAGES", 3)) != 3 or [int(b) for b in stages.get("NUM_BRANCHES", [2, 3, 4])] != [2, 3, 4]:
        raise ConfigError(f"official config MODEL.SPEC.STAGES: NUM_STAGES {stages.get('NUM_STAGES')} / NUM_BRANCHES "
                          f"{stages.get('NUM_BRANCHES')}: only 3 stages of 2, 3, 4 branches (HRNet) are supported")
    if any(b != "BASIC" for b in stages.get("BLOCK", ["BASIC"] * 3)):
        raise ConfigError(f"official config MODEL.SPEC.STAGES.BLOCK: {stages['BLOCK']}: only BASIC stages are "
                          f"supported")
    channels = [[int(c) for c in chs] for chs in stages["NUM_CHANNELS"]]
    blocks = [[int(b) for b in bl] for bl in stages.get("NUM_BLOCKS", [[4] * n for n in (2, 3, 4)])]
    for what, per_stage in (("NUM_CHANNELS", channels), ("NUM_BLOCKS", blocks)):
        if [len(v) for v in per_stage] != [2, 3, 4]:
            raise ConfigError(f"official config STAGES.{what}: {per_stage} does not give 2, 3, 4 branches")
    last = channels[-1]
    out: dict = {"backbone": {"name": _TIMM_WIDTHS.get(last[0], "hrnet_w32")}}
    if channels != [last[:n] for n in (2, 3, 4)]:
        out["hrnet_channels"] = channels                  # stages with their own widths
    elif last != [last[0] * 2 ** i for i in range(4)] or last[0] not in _TIMM_WIDTHS:
        out["hrnet_channels"] = last
    modules = [int(m) for m in stages.get("NUM_MODULES", [1, 4, 3])]
    if modules != [1, 4, 3]:
        out["hrnet_modules"] = modules
    per_stage = [b[0] if len(set(b)) == 1 else b for b in blocks]    # one count where a stage is uniform
    if per_stage != [4, 4, 4]:
        out["hrnet_blocks"] = per_stage
    return out


def config_from_official(cfg_json: dict) -> dict:
    """Official yacs config (as a dict) -> overrides of our ``model`` section (DEKRConfig fields)."""
    model = cfg_json.get("MODEL", {})
    spec = model.get("SPEC", {})
    stages = spec.get("STAGES", {})
    out: dict = _stages_from_official(stages) if stages else {}
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


_AUGMENT_KEYS = {"MAX_ROTATION": "max_rotation", "MIN_SCALE": "min_scale", "MAX_SCALE": "max_scale",
                 "SCALE_TYPE": "scale_type", "MAX_TRANSLATE": "max_translate", "FLIP": "flip_prob"}


def official_data_options(cfg_json: dict) -> dict:
    """Official DATASET.* -> our ``data`` section: keypoint format, square input size, bottom-up augmentation."""
    d = cfg_json.get("DATASET", {})
    fmt = _DATASETS.get(str(d.get("DATASET", "coco_kpt")))
    if fmt is None:
        raise ConfigError(f"official config DATASET.DATASET: unknown {d['DATASET']!r}")
    out: dict = {"format": fmt}
    if "INPUT_SIZE" in d:
        size = int(d["INPUT_SIZE"])
        if int(d.get("OUTPUT_SIZE", size // 4)) * 4 != size:
            raise ConfigError(f"official config DATASET.OUTPUT_SIZE: {d['OUTPUT_SIZE']} is not INPUT_SIZE / 4 "
                              f"({size} / 4); DEKR's heads run at stride 4")
        out["input_size"] = [size, size]
    augment = {ours: d[k] for k, ours in _AUGMENT_KEYS.items() if k in d}
    if augment:
        out["augment"] = {"bottomup": augment}
    return out


def official_train_options(cfg_json: dict) -> dict:
    """Official TRAIN.* -> our ``train`` section (``lib/utils/utils.py:get_optimizer``, MultiStepLR per epoch).
    Official code: TRAIN.WD reaches SGD only; Adam is built with the learning rate alone (train_step README Q13)."""
    t = cfg_json.get("TRAIN", {})
    if not t:
        return {}
    opt = str(t.get("OPTIMIZER", "adam")).lower()
    if opt not in ("adam", "sgd"):
        raise ConfigError(f"official config TRAIN.OPTIMIZER: {opt!r} unknown (the official code builds sgd or adam)")
    if opt == "sgd" and t.get("NESTEROV"):
        raise ConfigError("official config TRAIN.NESTEROV: Nesterov SGD is not supported here")
    out = {"optimizer": opt, "lr": float(t.get("LR", 1e-3)), "schedule": "step", "warmup_iters": 0,
           "weight_decay": float(t.get("WD", 0.0)) if opt == "sgd" else 0.0}
    if opt == "sgd":
        out["momentum"] = float(t.get("MOMENTUM", 0.9))
    if "LR_STEP" in t:
        out["step_epochs"] = [int(e) for e in t["LR_STEP"]]
    if "LR_FACTOR" in t:
        out["gamma"] = float(t["LR_FACTOR"])
    if "END_EPOCH" in t:
        out["epochs"] = int(t["END_EPOCH"]) - int(t.get("BEGIN_EPOCH", 0))
    if "IMAGES_PER_GPU" in t:
        out["batch_size"] = int(t["IMAGES_PER_GPU"])
    return out


def build_from_official(cfg_json: dict, weights: dict[str, torch.Tensor] | None = None):
    """Our Config + DEKR model (eval mode) for an official config, with converted official weights if given."""
    raw = {"method": "dekr", "model": config_from_official(cfg_json), "data": official_data_options(cfg_json),
           "train": official_train_options(cfg_json), "test": official_test_options(cfg_json),
           "name": "dekr_official"}
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


    folder = Path(folder)
    if (folder / "targets.npz").is_file():                          # a training step, not inference outputs
        return train_step_check(folder)
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
            trace["rescore_features"] = rescore_features(final, model.keypoints)
            trace["final_scores_rescored"] = rescorer(final, scores, model.keypoints)
        for key in ref.files:
            if not key.startswith(variant + "/"):
                continue
            leaf = key[len(variant) + 1:]
            if leaf not in trace:
                rows.append((f"{key} (not produced)", float("inf"), 0.0))
                continue
            _compare(key, trace[leaf], ref[key], _tolerance(key.split("/")[-1], variant), rows)
    return rows


# ----------------------------------------------------------------------------------------------------------
# Reference check against ../shared/reference/dekr/train_step: one official training iteration (tolerances and
# quirks Q1-Q15 from its README). Our own pipeline runs it: annotations -> raw sample -> DEKR train transform with
# the recorded augmentation parameters -> collate -> train-mode forward + losses -> backward -> the optimizer our
# build_optimizer makes of the official TRAIN section. Rows compare every array the official step produced.
# ----------------------------------------------------------------------------------------------------------
class _RecordedDraws:
    """An official sample's recorded random draws (inputs.npz ``rng_*``), served in order to our transforms' ``draw``
    methods as a numpy Generator would serve them; the bounds our shift draws ask for are kept for comparison."""

    def __init__(self, values):
        self.values, self.asked_bounds = list(values), []

    def _next(self):
        if not self.values:
            raise RegposeError("reference train_step: our augmentation draws more random numbers than the official")
        return self.values.pop(0)

    def random(self) -> float:
        return float(self._next())

    def integers(self, low: int, high: int) -> int:
        self.asked_bounds.append((low, high))
        return int(self._next())


def _annotation_file(folder: Path, cfg_json: dict) -> Path:
    """config.json's ``_annotation_file`` ('shared/data/...'): relative to the folder holding the shared root."""
    rel = Path(cfg_json.get("_annotation_file", ""))
    if rel.parts:
        for parent in folder.resolve().parents:
            for cand in (parent / rel, parent / Path(*rel.parts[1:])):
                if cand.is_file():
                    return cand
    raise RegposeError(f"{folder / 'config.json'}: annotation file {rel} (_annotation_file) not found above {folder}")


class _Rows:
    """Report rows (name, error, tolerance), each the worst over the samples / tensors it covers."""

    def __init__(self):
        self.rows: dict[str, list[float]] = {}

    def add(self, name: str, err: float, tol: float) -> None:
        if name in self.rows:
            self.rows[name][0] = max(self.rows[name][0], err)
        else:
            self.rows[name] = [err, tol]

    def atol(self, name: str, ours, ref, tol: float) -> None:
        """max |ours - ref| against ``tol``."""
        ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
        if ours.shape != ref.shape:
            return self.add(f"{name} (shape {ours.shape} vs {ref.shape})", float("inf"), tol)
        self.add(name, float(np.abs(ours - ref).max()) if ref.size else 0.0, tol)

    def ratio(self, name: str, ours, ref, scale, tol: float = 1.0) -> None:
        """max |ours - ref| / scale (elementwise; where scale is 0 any difference is infinite)."""
        ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
        if ours.shape != ref.shape:
            return self.add(f"{name} (shape {ours.shape} vs {ref.shape})", float("inf"), tol)
        d = np.abs(ours - ref)
        scale = np.broadcast_to(np.asarray(scale, dtype=np.float64), d.shape)
        r = np.where(d == 0, 0.0, np.divide(d, scale, out=np.full(d.shape, np.inf), where=scale > 0))
        self.add(name, float(r.max()) if r.size else 0.0, tol)

    def rel(self, name: str, ours, ref, rtol: float) -> None:
        """max |ours - ref| / |ref| against ``rtol``."""
        self.ratio(f"{name} (rel)", ours, ref, np.abs(np.asarray(ref, dtype=np.float64)), rtol)

    def table(self) -> list[tuple[str, float, float]]:
        return [(n, e, t) for n, (e, t) in self.rows.items()]


def _check_augmentation(rows: _Rows, transform, inputs, s: int, h: int, w: int) -> None:
    """Our draws, fed the official sample's recorded uniforms / integers, give its scale, rotation, shift (and the
    shift's truncated bounds, Q2), centre and flip; our affine matrices equal the official ones (Q3)."""
    affine = next(t for t in transform.augment.transforms if isinstance(t, BottomUpRandomAffine))
    flip = next(t for t in transform.augment.transforms if isinstance(t, HorizontalFlip))
    mine = inputs["rng_sample"] == s
    draws = _RecordedDraws(inputs["rng_value"][mine])
    params = affine.draw(h, w, draws)
    flipped = flip.draw(draws)
    bounds = inputs["rng_low_high"][mine][[i for i, f in enumerate(inputs["rng_fn"][mine]) if "randint" in f]]
    rows.atol("aug_scale", params["scale"], inputs["aug_scale"][s], 1e-9)
    rows.atol("aug_rotation_deg", params["rotation"], inputs["aug_rotation_deg"][s], 1e-9)
    rows.atol("aug_translate_bounds", np.array(draws.asked_bounds), bounds, 0.0)
    rows.atol("aug_translate_dxdy", params["center"] - (w / 2, h / 2), inputs["aug_translate_dxdy"][s], 0.0)
    rows.atol("aug_center", params["center"], inputs["aug_center"][s], 1e-9)
    rows.atol("aug_flip", flipped, inputs["aug_flip"][s], 0.0)
    rows.atol("random draws left over", len(draws.values), 0, 0.0)
    c, sc, rot = inputs["aug_center"][s], inputs["aug_scale"][s], inputs["aug_rotation_deg"][s]
    m_in, area_scale = dekr_affine_matrix(c, sc, affine.input_size, rot)
    m_out, _ = dekr_affine_matrix(c, sc, transform.output_size, rot)
    rows.atol("aug_mat_input", m_in[:2], inputs["aug_mat_input"][s], 1e-9)
    rows.atol("aug_mat_output", m_out[:2], inputs["aug_mat_output"][s], 1e-9)
    rows.rel("aug_area_scale", area_scale, inputs["aug_area_scale"][s], 1e-12)


def _check_sample(rows: _Rows, transform, raw: dict, inputs, targets, s: int) -> None:
    """Our DEKR training arrays for sample s (recorded augmentation replayed) against the official ones."""
    a = transform.arrays(raw)
    kept = raw["ann_ids"][~(raw["iscrowd"] & (raw["num_keypoints"] == 0))]
    rows.atol("ann_ids_all", raw["ann_ids"], inputs[f"ann_ids_all_s{s}"], 0.0)
    rows.atol("ann_ids_used", kept, inputs[f"ann_ids_used_s{s}"], 0.0)
    rows.atol("joints_raw", a["joints_raw"], inputs[f"joints_raw_s{s}"], 1e-9)
    rows.rel("area_raw", a["area_raw"], inputs[f"area_raw_s{s}"][:, 0], 1e-12)
    h, w = raw["image"].shape[:2]
    rows.atol("mask_raw", ignore_mask(raw["record"], h, w), inputs[f"mask_raw_s{s}"], 0.0)
    # OpenCV 4.x warps uint8 in 1/32-px fixed point, 5.x in floating point: the README measured up to 4 grey
    # levels between the two, so the network is fed the stored image (below) and ours is judged within that.
    rows.atol("image_uint8 (cv2 version rounding)", a["sample"]["image"], targets["image_uint8"][s], 4.0)
    rows.atol("image (normalised stored image_uint8)", to_tensor_normalize(targets["image_uint8"][s]).numpy(),
              targets["image"][s], 1e-6)
    rows.atol("joints", a["joints"], targets[f"joints_s{s}"], 1e-9)
    rows.rel("area", a["area"], targets[f"area_s{s}"][:, 0], 1e-12)
    rec = a["sample"]["augment"]
    rows.atol("augment recorded", [*rec["center"], rec["scale"], rec["rotation"], rec["flip"]],
              [*inputs["aug_center"][s], inputs["aug_scale"][s], inputs["aug_rotation_deg"][s], inputs["aug_flip"][s]],
              0.0)
    for key in ("ignore_mask", "heatmap_weight", "mask"):
        rows.atol(key, a[key], targets[key][s], 0.0)
    rows.atol("heatmap", a["heatmap"], targets["heatmap"][s], 1e-6)
    rows.atol("offset", a["offset"], targets["offset"][s], 1e-5)
    rows.rel("offset_weight", a["offset_weight"], targets["offset_weight"][s], 1e-6)


def _group(name: str) -> str:
    return name.split(".")[0]


def _check_step(rows: _Rows, model, grads: dict, ref, lr: float) -> None:
    """Gradients, parameters after the step and BN buffers against the official ones (converted to our names)."""
    ref_grad = {k[len("grad/"):]: torch.from_numpy(ref[k]) for k in ref.files if k.startswith("grad/")}
    ref_after = {k[len("param_after/"):]: torch.from_numpy(ref[k]) for k in ref.files if k.startswith("param_after/")}
    ref_buf = {k[len("buffer_after/"):]: torch.from_numpy(ref[k]) for k in ref.files if k.startswith("buffer_after/")}
    grad_tol = {k: 1e-4 * g.abs().max() + 1e-3 * g.abs() for k, g in ref_grad.items()}
    g_ref, tol, after = (convert_state_dict(d) for d in (ref_grad, grad_tol, ref_after))
    params = dict(model.named_parameters())
    if set(g_ref) != set(params) or set(after) != set(params):
        missing = sorted(set(params) ^ set(g_ref) | set(params) ^ set(after))
        rows.add(f"parameters not matched: {missing[:3]}", float("inf"), 0.0)
    for name in sorted(set(params) & set(g_ref) & set(after)):
        grp = _group(name)
        count = sum(_group(n) == grp for n in params)
        rows.ratio(f"grad/{grp} ({count} tensors; |d| / (1e-4 max|g| + 1e-3 |g|))", grads[name], g_ref[name],
                   tol[name])
        p, g = params[name].detach(), g_ref[name]
        # The first Adam step moves each element by lr g / (|g| + 1e-8): its sign is set by the gradient, so where
        # |g_ref| is within the gradient tolerance of 0 the official update is ±lr of rounding noise (on an AMD EPYC
        # 7 of 528,688 elements, all with |g| < 1e-5 max|g|, differ by up to 6.5e-4); README atol 1e-4 applies where
        # the gradient fixes the step.
        fixed = g.abs() > tol[name]
        rows.atol(f"param_after/{grp} (where |g| > grad tol)", p[fixed], after[name][fixed], 1e-4)
        rows.atol(f"param_after/{grp} (where |g| <= grad tol: |step| <= lr)", p[~fixed], after[name][~fixed], 2 * lr)
        strong = g.abs() > 1e-6
        rows.atol(f"param_after/{grp} (where |g| > 1e-6)", p[strong], after[name][strong], 5e-7)
    buffers = dict(model.named_buffers())
    b_ref = convert_state_dict(ref_buf)
    for name, value in b_ref.items():
        if name not in buffers:
            rows.add(f"buffer {name} (not in our model)", float("inf"), 0.0)
        elif name.endswith("num_batches_tracked"):
            rows.atol("buffer_after num_batches_tracked", buffers[name], value, 0.0)
        else:
            rows.ratio("buffer_after running stats (|d| / (1e-5 + 1e-5 |ref|))", buffers[name], value,
                       1e-5 + 1e-5 * value.double().abs())
    rows.atol("lr", lr, ref["lr"], 0.0)


def _check_optimizer(rows: _Rows, optimizer, built: dict) -> None:
    """Our optimizer is the official one: class and every group's lr / betas / eps / weight decay (Q13)."""
    want = built.get("param_group_hyperparams", {})
    rows.add(f"optimizer class ({type(optimizer).__name__} vs {built.get('class')})",
             0.0 if type(optimizer).__name__ == built.get("class") else float("inf"), 0.0)
    for g in optimizer.param_groups:
        for key in ("lr", "betas", "eps", "weight_decay", "amsgrad"):
            if key in want:
                rows.atol(f"optimizer {key}", np.asarray(g[key], np.float64), np.asarray(want[key], np.float64), 0.0)


def train_step_check(folder: str | Path) -> list[tuple[str, float, float]]:
    """One official DEKR training iteration (folder README) redone by our training code: rows (array, error,
    tolerance). The only injections are the recorded augmentation parameters and, as the README advises, the stored
    network input (our uint8 warp differs between OpenCV versions)."""
    folder = Path(folder)
    cfg_json = json.loads((folder / "config.json").read_text())
    inputs, targets, ref = (np.load(folder / f"{n}.npz") for n in ("inputs", "targets", "outputs"))
    cfg, model = build_from_official(cfg_json, load_npz_state_dict(folder / "weights.npz"))
    transform = get_method("dekr").transform(cfg, True)
    records = {r.image_id: r for r in load_annotation_file(_annotation_file(folder, cfg_json), cfg.data.format)}
    rows = _Rows()
    samples = []
    for s, image_id in enumerate(inputs["image_id"].tolist()):
        if image_id not in records:
            raise RegposeError(f"{folder}: image {image_id} is not in {cfg_json.get('_annotation_file')}")
        raw = raw_sample(records[image_id], inputs[f"image_raw_s{s}"], s)
        h, w = raw["image"].shape[:2]
        _check_augmentation(rows, transform, inputs, s, h, w)
        raw["augment"] = {"center": inputs["aug_center"][s], "scale": float(inputs["aug_scale"][s]),
                          "rotation": float(inputs["aug_rotation_deg"][s]), "flip": bool(inputs["aug_flip"][s])}
        _check_sample(rows, transform, raw, inputs, targets, s)
        samples.append(transform(raw))
    batch = collate(samples, model.size_divisibility)
    images = torch.from_numpy(targets["image"])                     # README: the stored input (cv2 versions)

    outputs = {}
    hooks = [head.register_forward_hook(lambda m, i, o, key=key: outputs.__setitem__(key, o))
             for key, head in (("heatmap", model.heatmap_head), ("offset", model.offset_head))]
    model.train()
    optimizer = build_optimizer(model, cfg.train)
    set_lr(optimizer, lr_factor(0, cfg.train, 1, list(cfg.train.steps)))
    _check_optimizer(rows, optimizer, cfg_json.get("_optimizer_as_built", {}))
    optimizer.zero_grad(set_to_none=True)
    try:
        losses = model(images, batch["targets"])                    # the trainer's path: train-mode forward + losses
    finally:
        for hk in hooks:
            hk.remove()
    loss = total_loss(losses)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    lr = float(optimizer.param_groups[0]["lr"])
    optimizer.step()

    t = {k: torch.stack([tg[k] for tg in batch["targets"]]) for k in batch["targets"][0]}
    for key in ("heatmap", "offset"):                               # README: atol 1e-4 + rtol 1e-4, as ../tiny
        rows.ratio(f"pred_{key} (|d| / (1e-4 + 1e-4 |ref|))", outputs[key].detach(), ref[f"pred_{key}"],
                   1e-4 + 1e-4 * np.abs(ref[f"pred_{key}"].astype(np.float64)))
    with torch.no_grad():
        unweighted = {"loss_heatmap_unweighted": heatmap_loss(outputs["heatmap"], t["heatmap"], t["heatmap_weight"]),
                      "loss_offset_unweighted": offset_loss(outputs["offset"], t["offset"], t["offset_weight"])}
    for key, value in {**unweighted, "loss_heatmap": losses["loss_heatmap"], "loss_offset": losses["loss_offset"],
                       "loss_total": loss}.items():
        rows.rel(key, value.detach(), ref[key], 1e-5)
    rows.atol("offset_num_pos", int((t["offset_weight"] > 0).sum()), ref["offset_num_pos"], 0.0)
    _check_step(rows, model, grads, ref, lr)
    return rows.table()
