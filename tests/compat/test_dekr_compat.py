"""Official DEKR checkpoints and training: the converter consumes every key of the released checkpoints' manifests
and of any official STAGES spec, converted official weights reproduce the official reference outputs
(../shared/reference/dekr/tiny), and our training code reproduces one official training iteration
(../shared/reference/dekr/train_step)."""
import json

import numpy as np
import pytest
import torch

from regpose.compat.dekr import (build_from_official, config_from_official, convert_rescore_state_dict,
                                 convert_state_dict, official_data_options, official_test_options,
                                 official_train_options, reference_check)
from regpose.config import ConfigError, load_config
from regpose.errors import CheckpointError
from regpose.models import build_model
from regpose.models.layers.adaptive_conv import REGULAR_GRID

from conftest import REFERENCE, REPO

DEKR = REFERENCE / "dekr"
CONFIGS = REPO / "configs"
_DTYPES = {"float32": torch.float32, "int64": torch.int64}


def _manifest(name: str) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    rows = []
    for line in (DEKR / name).read_text().splitlines():
        key, shape, dtype = line.split("\t")
        dims = () if shape == "scalar" else tuple(int(d) for d in shape.split("x"))
        rows.append((key, dims, _DTYPES[dtype]))
    return rows


def _fake_state(rows) -> dict[str, torch.Tensor]:
    """Tensors of the manifest's shapes: meta storage, except the regular_matrix buffers the converter checks."""
    out = {}
    for key, dims, dtype in rows:
        out[key] = REGULAR_GRID.clone() if key.endswith("regular_matrix") else torch.empty(dims, dtype=dtype,
                                                                                           device="meta")
    return out


@pytest.mark.parametrize("manifest,backbone,head", [("manifest_w32_coco.tsv", "hrnet_w32", 32),
                                                    ("manifest_w48_coco.tsv", "hrnet_w48", 48)])
def test_converter_consumes_every_manifest_key(manifest, backbone, head):
    rows = _manifest(manifest)
    assert len(rows) == 2264
    converted = convert_state_dict(_fake_state(rows))
    cfg = load_config({"method": "dekr", "model": {"backbone": backbone, "head_heatmap_channels": head},
                       "data": {"format": "coco"}})
    with torch.device("meta"):
        model = build_model(cfg)
    ours = model.state_dict()
    assert set(converted) == set(ours)
    for k, v in ours.items():
        assert tuple(converted[k].shape) == tuple(v.shape), k
    # nothing dropped: every official float is somewhere in ours (the 34 constant 2x9 grids are checked, not kept)
    official_floats = sum(int(np.prod(d)) for k, d, t in rows if t == torch.float32 and "regular_matrix" not in k)
    ours_floats = sum(v.numel() for v in converted.values() if v.dtype == torch.float32)
    assert official_floats == ours_floats
    # the official BN counters (343) map to ours, the 17 per-branch BNs of each adaptive block to one
    assert sum(k.endswith("num_batches_tracked") for k, _, _ in rows) == 343
    assert sum(k.endswith("regular_matrix") for k, _, _ in rows) == 34
    official_params = sum(int(np.prod(d)) for k, d, t in rows
                          if t == torch.float32 and not k.endswith(("running_mean", "running_var", "regular_matrix")))
    assert official_params == sum(p.numel() for p in model.parameters())


def test_converter_rejects_unknown_or_wrong_keys():
    rows = _manifest("manifest_w32_coco.tsv")
    state = _fake_state(rows)
    with pytest.raises(CheckpointError, match="unexpected"):
        convert_state_dict({**state, "head_heatmap.2.weight": torch.zeros(1)})
    bad = dict(state)
    bad["offset_feature_layers.3.1.regular_matrix"] = torch.zeros(2, 9)
    with pytest.raises(CheckpointError, match="regular 3x3 grid"):
        convert_state_dict(bad)
    missing = {k: v for k, v in state.items() if not k.startswith("offset_final_layer.5.")}
    with pytest.raises(CheckpointError, match="misses keypoint branches"):
        convert_state_dict(missing)


def test_rescore_converter_consumes_manifest():
    rows = _manifest("manifest_rescore_coco.tsv")
    state = {k: torch.zeros(d) for k, d, _ in rows}
    out = convert_rescore_state_dict(state)
    assert set(out) == set(state)
    assert sum(v.numel() for v in out.values()) == 85249
    with pytest.raises(CheckpointError):
        convert_rescore_state_dict({k: v for k, v in state.items() if k != "l3.bias"})


def test_config_from_official_tiny():
    cfg_json = json.loads((DEKR / "tiny" / "config.json").read_text())
    over = config_from_official(cfg_json)
    assert over["hrnet_channels"] == [8, 16, 24, 32]
    assert over["hrnet_modules"] == [1, 2, 1] and over["hrnet_blocks"] == [1, 1, 1]
    assert over["head_heatmap_channels"] == 8 and over["offset_channels_per_keypoint"] == 4
    assert over["test_input_size"] == 64 and over["max_absorb_distance"] == 12 and over["rescore_hidden"] == 16
    assert official_test_options(cfg_json) == {"flip": True, "scales": [1.0]}
    _, model = build_from_official(cfg_json)
    assert sum(p.numel() for p in model.parameters()) == 528688


def test_reference_check_tiny_passes():
    rows = reference_check(DEKR / "tiny")
    names = [r[0] for r in rows]
    ref = np.load(DEKR / "tiny" / "outputs.npz")
    # every array of outputs.npz is compared (pose arrays as xy and score rows)
    for key in ref.files:
        assert key in names or f"{key}[xy]" in names, key
    bad = [(n, e, t) for n, e, t in rows if not e <= t]
    assert not bad, bad
    # raw outputs within the reference README's suggested tolerance (atol 1e-4): it measured 3.8e-6 / 1.9e-5 between
    # thread counts on one machine, and another CPU gives 8.4e-6 on the heatmaps
    errs = {n: e for n, e, _ in rows}
    assert errs["heatmap"] <= 1e-4 and errs["offset"] <= 1e-4


# ----------------------------------------------------------------------------------------------------------
# One official training iteration (../shared/reference/dekr/train_step)
# ----------------------------------------------------------------------------------------------------------
def test_reference_check_train_step_passes():
    """Our data pipeline (recorded augmentation replayed), targets, losses, backward and the optimizer our
    build_optimizer makes reproduce the official iteration within the folder README's tolerances."""
    rows = reference_check(DEKR / "train_step")
    bad = [(n, e, t) for n, e, t in rows if not e <= t]
    assert not bad, bad
    names = " ".join(n for n, _, _ in rows)
    ref = np.load(DEKR / "train_step" / "outputs.npz")
    targets = np.load(DEKR / "train_step" / "targets.npz")
    # every array of the official step is judged: outputs, losses, targets, and all three tensor families
    for key in [k for k in ref.files if "/" not in k] + [k for k in targets.files if not k.endswith(("_s0", "_s1"))]:
        assert key in names, key
    for family in ("grad/", "param_after/", "buffer_after"):
        assert family in names, family
    for key in ("joints_raw", "area_raw", "mask_raw", "aug_translate_bounds", "aug_flip", "aug_mat_output",
                "ann_ids_used", "optimizer weight_decay"):
        assert key in names, key
    # the grad rows cover every parameter (counts are ours: the 17 official offset branches are stacked)
    counts = [int(n.split("(")[1].split()[0]) for n, _, _ in rows if n.startswith("grad/")]
    cfg_json = json.loads((DEKR / "train_step" / "config.json").read_text())
    _, model = build_from_official(cfg_json)
    assert sum(counts) == len(list(model.parameters()))
    errs = {n: e for n, e, _ in rows}
    # discrete data exact (README): the flip, shifts, masks, positive-offset count
    for key in ("aug_flip", "aug_translate_dxdy", "ignore_mask", "heatmap_weight", "mask", "offset_num_pos"):
        assert errs[key] == 0, key


def test_official_train_section_is_our_w32_recipe():
    """The train_step folder carries the official W32 yaml's TRAIN / DATASET / LOSS sections: our shipped W32 COCO
    config trains with the same optimizer (Adam without decay, README Q13), schedule, batch, augmentation and
    loss factors."""
    cfg_json = json.loads((DEKR / "train_step" / "config.json").read_text())
    train = official_train_options(cfg_json)
    assert train["optimizer"] == "adam" and train["weight_decay"] == 0.0      # TRAIN.WD 1e-4 never reaches Adam
    ours = load_config(CONFIGS / "dekr" / "dekr_hrnet_w32_coco_512.yaml")
    for key, value in train.items():
        assert getattr(ours.train, key) == (tuple(value) if isinstance(value, list) and key == "betas" else value), key
    assert ours.train.betas == (0.9, 0.999) and ours.train.clip_grad_norm == 0
    for key, value in official_data_options(cfg_json)["augment"]["bottomup"].items():
        assert getattr(ours.data.augment.bottomup, key) == value, key
    model = config_from_official(cfg_json)
    for key in ("sigma", "center_sigma", "bg_weight", "offset_radius", "heatmap_loss_factor", "offset_loss_factor"):
        assert getattr(ours.model, key) == model[key], key


def test_official_sgd_keeps_its_weight_decay_and_unknown_optimizers_are_refused():
    sgd = official_train_options({"TRAIN": {"OPTIMIZER": "sgd", "LR": 0.1, "WD": 1e-4, "MOMENTUM": 0.8}})
    assert sgd["weight_decay"] == 1e-4 and sgd["momentum"] == 0.8
    with pytest.raises(ConfigError, match="TRAIN.OPTIMIZER"):
        official_train_options({"TRAIN": {"OPTIMIZER": "rmsprop"}})
    with pytest.raises(ConfigError, match="OUTPUT_SIZE"):
        official_data_options({"DATASET": {"INPUT_SIZE": 512, "OUTPUT_SIZE": 256}})


# ----------------------------------------------------------------------------------------------------------
# The official STAGES vocabulary (defect 6): per-branch blocks and widths
# ----------------------------------------------------------------------------------------------------------
def _bn(prefix: str, c: int) -> dict:
    return {**{f"{prefix}.{n}": (c,) for n in ("weight", "bias", "running_mean", "running_var")},
            f"{prefix}.num_batches_tracked": ()}


def _conv_bn(prefix: str, cout: int, cin: int, k: int) -> dict:
    return {f"{prefix}.0.weight": (cout, cin, k, k), **_bn(f"{prefix}.1", cout)}


def _basic(prefix: str, c: int) -> dict:
    return {f"{prefix}.conv1.weight": (c, c, 3, 3), **_bn(f"{prefix}.bn1", c),
            f"{prefix}.conv2.weight": (c, c, 3, 3), **_bn(f"{prefix}.bn2", c)}


def official_keys(stages: dict, head: int, k: int = 17, p: int = 15) -> dict[str, tuple]:
    """State-dict keys and shapes of the official PoseHigherResolutionNet for a STAGES spec, reasoned from the
    official lib/models/hrnet_dekr.py (stem, hard-coded layer1, _make_transition_layer, HighResolutionModule
    branches and fuse layers, heads); checked against the released manifests below."""
    keys = {"conv1.weight": (64, 3, 3, 3), **_bn("bn1", 64), "conv2.weight": (64, 64, 3, 3), **_bn("bn2", 64)}
    for i in range(4):
        cin = 64 if i == 0 else 256
        keys.update({f"layer1.{i}.conv1.weight": (64, cin, 1, 1), **_bn(f"layer1.{i}.bn1", 64),
                     f"layer1.{i}.conv2.weight": (64, 64, 3, 3), **_bn(f"layer1.{i}.bn2", 64),
                     f"layer1.{i}.conv3.weight": (256, 64, 1, 1), **_bn(f"layer1.{i}.bn3", 256)})
    keys.update(_conv_bn("layer1.0.downsample", 256, 64, 1))
    prev = [256]
    for s, cur in enumerate(stages["NUM_CHANNELS"]):
        for b, c in enumerate(cur):
            if b < len(prev):
                if c != prev[b]:
                    keys.update(_conv_bn(f"transition{s + 1}.{b}", c, prev[b], 3))
            else:
                for j in range(b + 1 - len(prev)):
                    keys.update(_conv_bn(f"transition{s + 1}.{b}.{j}", c if j == b - len(prev) else prev[-1],
                                         prev[-1], 3))
        for m in range(stages["NUM_MODULES"][s]):
            pre = f"stage{s + 2}.{m}"
            for b, c in enumerate(cur):
                for i in range(stages["NUM_BLOCKS"][s][b]):
                    keys.update(_basic(f"{pre}.branches.{b}.{i}", c))
            for i, ci in enumerate(cur):
                for j, cj in enumerate(cur):
                    if j > i:
                        keys.update(_conv_bn(f"{pre}.fuse_layers.{i}.{j}", ci, cj, 1))
                    for t in range(i - j):
                        keys.update(_conv_bn(f"{pre}.fuse_layers.{i}.{j}.{t}", ci if t == i - j - 1 else cj, cj, 3))
        prev = cur
    feats = sum(prev)
    keys.update({**_conv_bn("transition_heatmap", head, feats, 1), **_basic("head_heatmap.0.0", head),
                 "head_heatmap.1.weight": (k + 1, head, 1, 1), "head_heatmap.1.bias": (k + 1,),
                 **_conv_bn("transition_offset", k * p, feats, 1)})
    for j in range(k):
        for b in range(2):
            pre = f"offset_feature_layers.{j}.{b}"
            keys.update({f"{pre}.regular_matrix": (2, 9), f"{pre}.transform_matrix_conv.weight": (4, p, 3, 3),
                         f"{pre}.transform_matrix_conv.bias": (4,), f"{pre}.translation_conv.weight": (2, p, 3, 3),
                         f"{pre}.translation_conv.bias": (2,), f"{pre}.adapt_conv.weight": (p, p, 3, 3),
                         **_bn(f"{pre}.bn", p)})
        keys.update({f"offset_final_layer.{j}.weight": (2, p, 1, 1), f"offset_final_layer.{j}.bias": (2,)})
    return keys


_W32_STAGES = {"NUM_MODULES": [1, 4, 3], "NUM_BLOCKS": [[4] * 2, [4] * 3, [4] * 4],
               "NUM_CHANNELS": [[32, 64], [32, 64, 128], [32, 64, 128, 256]]}


def test_official_key_reasoning_matches_the_released_manifest():
    rows = _manifest("manifest_w32_coco.tsv")
    assert official_keys(_W32_STAGES, 32) == {key: dims for key, dims, _ in rows}


def _random_state(keys: dict[str, tuple]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {}
    for key, dims in keys.items():
        if key.endswith("regular_matrix"):
            out[key] = REGULAR_GRID.clone()
        elif key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            out[key] = torch.rand(dims, generator=g) + 0.5
        else:
            out[key] = 0.1 * torch.randn(dims, generator=g)
    return out


def test_non_uniform_official_stages_build_and_convert():
    """Defect 6: an official spec whose NUM_BLOCKS differ between branches (and a stage widening its last branch,
    NUM_MODULES 1/2/1, an unused FUSE_METHOD value) builds with the official keys and shapes, and converted
    weights load and run."""
    stages = {"NUM_STAGES": 3, "NUM_MODULES": [1, 2, 1], "NUM_BRANCHES": [2, 3, 4], "BLOCK": ["BASIC"] * 3,
              "NUM_BLOCKS": [[2, 1], [1, 1, 2], [1, 2, 1, 1]], "FUSE_METHOD": ["SUM", "CAT", "SUM"],
              "NUM_CHANNELS": [[8, 16], [8, 20, 24], [8, 20, 24, 32]]}
    cfg_json = {"DATASET": {"DATASET": "coco_kpt", "INPUT_SIZE": 64},
                "MODEL": {"SPEC": {"FINAL_CONV_KERNEL": 1, "STAGES": stages,
                                   "HEAD_HEATMAP": {"BLOCK": "BASIC", "NUM_BLOCKS": 1, "NUM_CHANNELS": 8},
                                   "HEAD_OFFSET": {"BLOCK": "ADAPTIVE", "NUM_BLOCKS": 2, "NUM_CHANNELS_PERKPT": 4}}}}
    over = config_from_official(cfg_json)
    assert over["hrnet_blocks"] == [[2, 1], [1, 1, 2], [1, 2, 1, 1]]
    assert over["hrnet_channels"] == [[8, 16], [8, 20, 24], [8, 20, 24, 32]]
    keys = official_keys(stages, 8, p=4)
    state = _random_state(keys)
    _, model = build_from_official(cfg_json, state)          # raises unless every key converts and fits
    ours = model.state_dict()
    converted = convert_state_dict(state)
    assert set(converted) == set(ours)
    assert all(tuple(converted[k].shape) == tuple(v.shape) for k, v in ours.items())
    official_params = sum(int(np.prod(d)) for key, d in keys.items()
                          if not key.endswith(("running_mean", "running_var", "num_batches_tracked", "regular_matrix")))
    assert official_params == sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        heatmap, offset = model(torch.randn(1, 3, 64, 64))
    assert heatmap.shape == (1, 18, 16, 16) and offset.shape == (1, 34, 16, 16) and torch.isfinite(offset).all()


@pytest.mark.parametrize("change,match", [
    ({"NUM_CHANNELS": [[8, 16], [12, 16, 24], [12, 16, 24, 32]]}, "before the last"),
    ({"BLOCK": ["BASIC", "BOTTLENECK", "BASIC"]}, "BLOCK"),
    ({"NUM_BLOCKS": [[1, 1], [1, 1], [1, 1, 1, 1]]}, "NUM_BLOCKS"),
    ({"NUM_STAGES": 2}, "NUM_STAGES")])
def test_official_stages_the_official_code_cannot_run_are_one_line_errors(change, match):
    stages = {"NUM_MODULES": [1, 1, 1], "NUM_BLOCKS": [[1, 1], [1, 1, 1], [1, 1, 1, 1]],
              "NUM_CHANNELS": [[8, 16], [8, 16, 24], [8, 16, 24, 32]], **change}
    cfg_json = {"DATASET": {"DATASET": "coco_kpt"}, "MODEL": {"SPEC": {"STAGES": stages}}}
    with pytest.raises(ConfigError, match=match):
        build_from_official(cfg_json)
