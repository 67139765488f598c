"""Every shipped config runs: it resolves, reads its own dataset's files, builds the full-size model and the
optimizer with its own parameter groups, takes one real optimizer step on generated images of its keypoint format
(COCO 17 / CrowdPose 14 / MPII 16) at a reduced input size and evaluates once (regpose.engine.dryrun).

The full-size QueryPose models are checked here on the meta device only; bench/check_every_config.py runs their
real step and evaluation through the same code. Why: 188M-494M parameters, so one AdamW step peaks at 4.0-4.7 GB
(measured: R-50 light, HRNet-W48 light) up to ~10 GB (Swin-L, ~20 bytes per parameter), and one evaluation of two
160-pixel images takes 95-150 s on one core (100 proposals x 7 parts x 6 stages of RoI convolutions)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from regpose.config import load_config
from regpose.data.keypoints import get_meta
from regpose.engine.dryrun import dry_run
from regpose.engine.recipe import build_on_meta
from regpose.engine.schedule import build_optimizer
from conftest import REPO

pytestmark = pytest.mark.usefixtures("single_thread")

CONFIGS = sorted(p for p in (REPO / "configs").glob("*/*.yaml") if p.parent.name != "_base_")
# Too big and too slow for CI (see the module docstring): meta-device checks here, the real step in the bench.
BENCH_ONLY = {f"querypose_{name}.yaml" for name in (
    "r50_coco", "r50_light_coco", "r50_crowdpose", "hrnet_w32_coco", "hrnet_w32_nonlight_coco", "hrnet_w48_coco",
    "hrnet_w48_light_coco", "hrnet_w48_crowdpose", "swin_l_coco", "swin_l_light_coco", "swin_l_crowdpose")}


def _id(path: Path) -> str:
    return path.stem


def _dataset_of(path: str) -> str:
    """Which dataset a shipped config's file belongs to: data/<dataset>/... or data/synth/<format>_<split>..."""
    parts = Path(path).parts
    return parts[2].split("_")[0] if parts[1] == "synth" else parts[1]


def test_bench_only_configs_exist():
    assert BENCH_ONLY <= {p.name for p in CONFIGS}


@pytest.mark.parametrize("config", CONFIGS, ids=_id)
def test_config_resolves_to_its_own_data_and_builds_its_optimizer(config):
    cfg = load_config(config)
    for split in (cfg.data.train, cfg.data.val):
        files = split.ann_files or [split.root]
        assert {_dataset_of(f) for f in files} == {cfg.data.format}, f"{config.name}: {files}"
    model = build_on_meta(cfg)
    assert model.num_keypoints == get_meta(cfg.data.format).num_keypoints
    groups = build_optimizer(model, cfg.train).param_groups
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters()) > 0


@pytest.mark.parametrize("config", [c for c in CONFIGS if c.name not in BENCH_ONLY], ids=_id)
def test_config_takes_a_real_optimizer_step_and_evaluates(config, tmp_path):
    report = dry_run(config, tmp_path)
    assert math.isfinite(report.loss)
    assert report.tensors_with_gradient > 0.5 * report.trainable_tensors and report.changed_tensors > 0
    fmt = load_config(config).data.format
    assert set(report.metrics) >= ({"PCKh"} if fmt == "mpii" else {"AP", "AR"})
    results = json.loads((tmp_path / "run" / "results_val.json").read_text())
    assert all(len(r["keypoints"]) == 3 * get_meta(fmt).num_keypoints for r in results)
