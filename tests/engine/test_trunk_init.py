"""The trainer initialises trunks (and only the trainer): frozen random trunks are refused, ``train.init_weights``
reports what it loaded and refuses a checkpoint of another network, resumed runs and inference read no
initialisation file."""
from __future__ import annotations

import pytest
import torch

from regpose.config import ConfigError, load_config, save_config
from regpose.checkpoint import load_model_weights
from regpose.engine.trainer import Trainer
from regpose.errors import CheckpointError
from regpose.models import build_model
from conftest import REPO

pytestmark = pytest.mark.usefixtures("single_thread")

UNREACHABLE = "http://127.0.0.1:9/R-50.pkl"          # a download attempt would fail at once
TINY_QUERYPOSE = {"backbone": {"kwargs": {"channels": [4, 8, 16, 32], "stem_width": 16}}, "hidden_dim": 32,
                  "num_proposals": 4, "num_stages": 1, "num_heads": 4, "dim_feedforward": 32, "dim_dynamic": 8,
                  "part_dim": 16, "num_convs": 1}


def _querypose_cfg(tmp_path, *overrides, fmt="coco"):
    """A tiny QueryPose with the method's trunk defaults (R-50 layout, FrozenBN, FREEZE_AT 2), weights none."""
    return load_config({"method": "querypose", "model": TINY_QUERYPOSE, "data": {"format": fmt},
                        "output_dir": str(tmp_path / "run"), "train": {"num_workers": 0}}, list(overrides))


def _trainer(cfg, resume=False) -> Trainer:
    return Trainer(cfg, resume=resume, device="cpu", train_dataset=[None] * 4)


def test_freezing_a_random_trunk_is_refused_unless_allowed(tmp_path):
    with pytest.raises(ConfigError) as e:
        _trainer(_querypose_cfg(tmp_path))
    msg = str(e.value)
    assert "never initialised from a file" in msg and "model.backbone.allow_random_frozen=true" in msg
    assert "\n" not in msg
    trainer = _trainer(_querypose_cfg(tmp_path, "model.backbone.allow_random_frozen=true"))
    assert not any(p.requires_grad for p in trainer.model.backbone.body.layer1.parameters())


def test_the_paper_config_refuses_a_random_frozen_trunk():
    """querypose_r50_coco.yaml freezes the stem and res2 of an ImageNet R-50: without its weights that is an
    error, with them (or the opt-in) it is not."""
    from regpose.models.backbones import frozen_uninitialised

    path = REPO / "configs/querypose/querypose_r50_coco.yaml"
    with torch.device("meta"):
        model = build_model(load_config(path, ["model.backbone.weights=none"]))
    frozen = frozen_uninitialised(model)
    assert "backbone.body.conv1.weight" in frozen and "backbone.body.layer1.0.bn1.running_var" in frozen
    assert not any(n.startswith("backbone.body.layer2.0.conv") for n in frozen)      # res3 trains
    with torch.device("meta"):
        allowed = build_model(load_config(path, ["model.backbone.allow_random_frozen=true"]))
    assert frozen_uninitialised(allowed) == []


def test_init_weights_counts_as_initialisation_and_reports_what_it_loaded(tmp_path):
    """A COCO checkpoint into a CrowdPose model: trunk and decoder load, the 17-keypoint heads do not fit; the
    frozen trunk is initialised by it, so training may start."""
    coco = build_model(_querypose_cfg(tmp_path, "model.backbone.allow_random_frozen=true"))
    ckpt = tmp_path / "coco.pth"
    torch.save({"model": coco.state_dict()}, ckpt)
    cfg = _querypose_cfg(tmp_path, f"train.init_weights={ckpt}", fmt="crowdpose")
    trainer = _trainer(cfg)
    ours = trainer.model.state_dict()
    assert torch.equal(ours["backbone.body.conv1.weight"], coco.state_dict()["backbone.body.conv1.weight"])
    report = load_model_weights(build_model(cfg), str(ckpt), strict=False)
    assert report.mismatched and all(k.startswith("kpt_stages.") for k in report.mismatched)
    assert report.summary().startswith(f"{ckpt}: loaded {len(report.loaded)}/")
    assert f"{len(report.mismatched)} shape-mismatched" in report.summary()


def test_init_weights_from_another_method_is_an_error(tmp_path):
    """A Poseur checkpoint into DEKR: nothing fits by name, which used to load silently (exit 0)."""
    poseur = build_model(load_config({"method": "poseur", "model": {
        "backbone": {"name": "resnet18", "kwargs": {"stem_width": 16, "channels": [16, 32, 64, 128]}},
        "embed_dim": 64, "num_decoder_layers": 1, "self_attn_heads": 4, "num_points": 2, "ffn_dim": 64}}))
    ckpt = tmp_path / "poseur.pth"
    torch.save({"model": poseur.state_dict()}, ckpt)
    cfg = load_config(REPO / "configs/dekr/dekr_hrnet_tiny_synthetic.yaml",
                      [f"train.init_weights={ckpt}", f"output_dir={tmp_path / 'dekr'}"])
    with pytest.raises(CheckpointError, match=r"poseur.pth: only 0\.0% of the parameters fit"):
        _trainer(cfg)


def test_resumed_runs_and_inference_read_no_initialisation_file(tmp_path):
    cfg = _querypose_cfg(tmp_path, "model.backbone.allow_random_frozen=true")
    _trainer(cfg).save("last.pth", 0)
    unreachable = _querypose_cfg(tmp_path, f"model.backbone.weights={UNREACHABLE}")
    resumed = _trainer(unreachable, resume=True)                  # no download: the checkpoint has every weight
    assert resumed.start_iter == 0
    model = build_model(unreachable)                              # test / infer / export build this way
    load_model_weights(model, str(tmp_path / "run" / "last.pth"))
    cfg_path = tmp_path / "qp.yaml"
    save_config(unreachable, cfg_path)
    from regpose.inference.predictor import Predictor

    Predictor(str(cfg_path), str(tmp_path / "run" / "last.pth"), device="cpu")
