"""Tiny models of every method for the inference / export tests.

QueryPose and DEKR use the official reduced reference models (../shared/reference/<method>/tiny: official config,
deterministic non-trivial weights), so their outputs are realistic: sensible boxes and people above the
thresholds. (A randomly initialised QueryPose regresses boxes thousands of pixels wide whose chaotic keypoints
say nothing about export fidelity; a random DEKR finds nobody.) The other methods are small random networks with
the official structure.
"""
from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path

import pytest
import torch

from regpose.config import load_config, save_config, to_dict
from regpose.models import build_model
from regpose.models.registry import get_method
from conftest import REFERENCE

METHODS = ["querypose", "dekr", "directpose", "poseur", "rle", "tfpose"]
TOPDOWN = {"poseur", "rle", "tfpose"}
SMALL_ONESTAGE = {"onestage": {"test_size": 160, "test_max_size": 256}}

_RAW = {
    "dekr": {"model": {"test_input_size": 192}},   # 128 hits the data-layer ceil64 bug (see report)
    "directpose": {"model": {"backbone": {"name": "test_resnet", "norm": "bn", "freeze_at": 0}, "fpn_channels": 32,
                             "head_channels": 32, "num_convs": 2, "group_channels": 8, "hm_channels": 16,
                             "pre_nms_thresh": 0.0, "pre_nms_topk": 50},
                   "data": {"augment": SMALL_ONESTAGE}},
    "poseur": {"model": {"backbone": {"name": "resnet18", "kwargs": {"stem_width": 16, "channels": [16, 32, 64, 128]}},
                         "embed_dim": 64, "num_decoder_layers": 2, "self_attn_heads": 4, "num_points": 2,
                         "ffn_dim": 128},
               "data": {"input_size": [48, 64]}},
    "rle": {"model": {"backbone": {"name": "resnet18", "kwargs": {"stem_width": 16, "channels": [16, 32, 64, 128]}}},
            "data": {"input_size": [48, 64]}},
    "tfpose": {"model": {"backbone": {"name": "resnet18", "kwargs": {"channels": [16, 32, 64, 128]}}, "embed_dim": 32,
                         "num_heads": 4, "num_points": 2, "num_encoder_layers": 1, "num_decoder_layers": 2,
                         "aux_channels": 16},
               "data": {"input_size": [64, 96]}},
}


def _querypose():
    from regpose.compat.querypose import build_reference_model, config_from_official

    folder = REFERENCE / "querypose" / "tiny"
    ref, cfg_json = build_reference_model(folder)
    cfg = load_config({"method": "querypose", "model": config_from_official(cfg_json),
                       "data": {"augment": SMALL_ONESTAGE}, "name": "querypose_tiny"})
    model = build_model(cfg)
    model.load_state_dict(ref.state_dict())
    return cfg, model


def _dekr():
    from regpose.compat.dekr import build_from_official
    from regpose.compat.official import load_npz_state_dict

    folder = REFERENCE / "dekr" / "tiny"
    cfg, model = build_from_official(json.loads((folder / "config.json").read_text()),
                                     load_npz_state_dict(folder / "weights.npz"))
    raw = to_dict(cfg)
    raw["model"].update(_RAW["dekr"]["model"])
    raw["test"]["flip"] = False
    cfg = load_config(raw)
    state = model.state_dict()
    model = build_model(cfg)
    model.load_state_dict(state)
    return cfg, model


@lru_cache(maxsize=None)
def _cached(method: str):
    torch.manual_seed(0)
    if method == "querypose":
        cfg, model = _querypose()
    elif method == "dekr":
        cfg, model = _dekr()
    else:
        raw = copy.deepcopy(_RAW[method])
        raw.update(method=method, name=f"{method}_tiny")
        cfg = load_config(raw)
        model = build_model(cfg)
    return cfg, {k: v.clone() for k, v in model.state_dict().items()}


def tiny(method: str):
    """(config, eval-mode model) of the tiny ``method``; every call builds a fresh model with the same weights."""
    cfg, state = _cached(method)
    cfg = load_config(to_dict(cfg))
    model = build_model(cfg)
    model.load_state_dict(state)
    return cfg, model.eval()


def write_tiny(method: str, folder: Path) -> tuple[Path, Path]:
    """The tiny model as files a user would have: config YAML and checkpoint."""
    cfg, state = _cached(method)
    folder.mkdir(parents=True, exist_ok=True)
    cfg_path, weights = folder / f"{method}.yaml", folder / f"{method}.pth"
    save_config(cfg, cfg_path)
    torch.save(state, weights)
    return cfg_path, weights


def method_transform(cfg):
    """The method's test transform; skips while the method's data transform has not landed yet."""
    try:
        return get_method(cfg.method).transform(cfg, False)
    except NotImplementedError as e:
        pytest.skip(f"{cfg.method}: data transform not implemented yet ({e})")
