"""``regpose recipe``: the effective recipe from the resolved config and the built (meta-device) model, with values
computed here by hand from the official recipes."""
from __future__ import annotations

import re

import pytest

from regpose.cli import main
from regpose.config import load_config
from regpose.engine.recipe import recipe_text
from conftest import REPO

POSEUR = REPO / "configs/poseur/poseur_r50_coco_256x192.yaml"
QUERYPOSE = REPO / "configs/querypose/querypose_r50_coco.yaml"


def _flat(text: str) -> str:
    """The recipe with its line wrapping undone (phrases may break across lines)."""
    return " ".join(text.split())


def _row(text: str, label: str) -> list[str]:
    """The whitespace-separated cells of the parameter-group row that starts with ``label``."""
    line = next(line for line in text.splitlines() if line[15:].startswith(label + " "))
    return line[15:].split()


def test_poseur_recipe_on_two_gpus_with_linear_scaling(capsys):
    """Poseur R-50 (8 x 32 = 256 crops, AdamW 1e-3, sampling offsets x0.1) on 2 GPUs, scaled linearly (k = 1/4).
    Sampling offsets: 6 layers x Linear(256 -> 8 heads x 4 levels x 4 points x 2) = 6 x (65,536 + 256) = 394,752.
    COCO: 149,813 people / 64 per step = 2,340.83 it/epoch -> 325 epochs = 760,770 iterations."""
    assert main(["recipe", str(POSEUR), "--world-size", "2", "train.batch_scaling=linear"]) == 0
    text = capsys.readouterr().out
    flat = _flat(text)
    assert _row(text, "sampling_offsets") == ["sampling_offsets", "12", "394,752", "2.5e-05", "0.0001"]
    assert _row(text, "reference_proj")[:3] == ["reference_proj", "0", "0"] and "optional" in text
    assert _row(text, "(no rule)")[4] == "0.00025"
    assert "total batch 64 = 2 process(es) x 32 per process x 1 accumulation step(s); recipe: 256" in flat
    assert "warm-up 2,000 it (linear from x0.001)" in flat
    assert "760,770 iterations = 325.0 epochs of 149,813" in flat
    assert "amp fp16 (CUDA), SyncBN" in flat and "flip_fusion=type2" in flat
    assert len(text.splitlines()) <= 40


def test_querypose_recipe_shows_the_frozen_stem_and_the_flow_at_ten_times():
    """QueryPose R-50: stem conv (64x3x7x7 = 9,408) and res2 (conv1 4,096 + 2 x 16,384, 3 x 36,864 3x3, 3 x 16,384
    expansions, 16,384 shortcut = 212,992) frozen: 11 tensors, 222,400 parameters; the RealNVP flow (53,784
    parameters, official count) at 2.5e-4. 140,000 iterations x 16 / 64,115 images = 34.9 epochs."""
    text = recipe_text(load_config(QUERYPOSE), world_size=8)
    flat = _flat(text)
    assert _row(text, "frozen")[:3] == ["frozen", "11", "222,400"]
    assert _row(text, r"^flow\.")[1:4] == ["72", "53,784", "0.00025"]
    assert "140,000 iterations = 34.9 epochs of 64,115" in flat
    assert "lr steps at iterations 110,000, 130,000 = epochs 27.5, 32.4" in flat
    assert "grad clip L2 1," in flat and "seed 40244023" in flat


def test_unknown_training_set_is_reported_not_guessed(tmp_path):
    cfg = load_config(POSEUR, [f"data.train.ann_files=[{tmp_path / 'mine.json'}]", "data.format=coco"])
    text = recipe_text(cfg, world_size=8)
    assert "325 epochs, lr steps at epochs [255, 310] (iterations: unknown" in _flat(text)


def test_recipe_reads_no_weights_and_a_bad_config_is_one_line(tmp_path, capsys):
    # a weights file that does not exist would fail any attempt to read it
    assert main(["recipe", str(POSEUR), f"model.backbone.weights={tmp_path / 'absent.pth'}"]) == 0
    assert re.search(r"trunk init resnet50 from \S*absent.pth", _flat(capsys.readouterr().out))
    assert main(["recipe", str(POSEUR), "train.lr_rules=[{pattern: sampling_ofsets}]"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: train.lr_rules: pattern 'sampling_ofsets' matches no trainable parameter (mark it "
                   "'optional: true' if only some variants of the model have it)")


@pytest.mark.parametrize("config", ["dekr/dekr_hrnet_w48_coco_640.yaml", "directpose/directpose_r50_coco.yaml",
                                    "tfpose/tfpose_r50_mpii_256x256.yaml"])
def test_recipe_of_other_families(config):
    text = recipe_text(load_config(REPO / "configs" / config), world_size=8)
    assert text.splitlines()[0].startswith("recipe of") and "param groups" in text and "test" in text
