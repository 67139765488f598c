"""Official checkpoint files go straight into ``Predictor`` and ``regpose infer``: recognised by their keys,
converted in memory (one log line says so), giving exactly the converted model. The files are written here in
each official code's layout from the shared reference weights (../shared/reference/<method>/tiny)."""
from __future__ import annotations

import json

import pytest
import torch

from regpose import Predictor
from regpose.cli import main
from regpose.compat import dekr, poseur, querypose
from regpose.compat.official import load_npz_state_dict
from regpose.config import load_config, save_config
from regpose.models.registry import detect_official
from _tiny import write_tiny
from conftest import REAL, REFERENCE

pytestmark = pytest.mark.usefixtures("single_thread")


def _official_file(method: str, folder, state: dict) -> str:
    """``state`` saved as the official code saves it: HRNet/DEKR a DataParallel state dict, mmpose (Poseur)
    ``{"state_dict", "meta"}``, detectron2 (QueryPose) ``{"model", "iteration"}``."""
    path = folder / f"official_{method}.pth"
    if method == "dekr":
        obj = {f"module.{k}": v for k, v in state.items()}
    elif method == "poseur":
        obj = {"state_dict": state, "meta": {"epoch": 210}}
    else:
        obj = {"model": state, "iteration": 0}
    torch.save(obj, path)
    return str(path)


def _reference(method: str):
    """(our config, the reference model converted by the compat module, official state dict)."""
    folder = REFERENCE / method / "tiny"
    official = load_npz_state_dict(folder / "weights.npz")
    cfg_json = json.loads((folder / "config.json").read_text())
    if method == "dekr":
        cfg, model = dekr.build_from_official(cfg_json, official)
    elif method == "poseur":
        model, _ = poseur.build_reference_model(folder)
        cfg = load_config({"method": "poseur", "model": poseur.config_from_official(cfg_json)})
    else:
        model, _ = querypose.build_reference_model(folder)
        cfg = load_config({"method": "querypose", "model": querypose.config_from_official(cfg_json)})
        # the BatchNorm step counters weights.npz leaves out (all 0); a released checkpoint holds them
        official.update({f"head.pose_head_series.{s}.part_embed_generator.upsample.1.num_batches_tracked":
                         torch.zeros((), dtype=torch.long) for s in range(len(model.kpt_stages))})
    return cfg, model, official


@pytest.mark.parametrize("method", ["dekr", "poseur", "querypose"])
def test_predictor_takes_an_official_checkpoint(method, tmp_path):
    cfg, reference, official = _reference(method)
    assert detect_official(official) == method
    assert detect_official(reference.state_dict()) is None          # ours is never taken for an official one
    cfg_path = tmp_path / f"{method}.yaml"
    save_config(cfg, cfg_path)
    loaded = Predictor(cfg_path, _official_file(method, tmp_path, official), device="cpu").model.state_dict()
    expected = reference.state_dict()
    assert loaded.keys() == expected.keys()
    for k, v in expected.items():
        assert torch.equal(loaded[k], v), k


def test_infer_takes_an_official_dekr_checkpoint_and_says_so(tmp_path, capsys):
    cfg_path, converted = write_tiny("dekr", tmp_path / "ours")
    official = _official_file("dekr", tmp_path, load_npz_state_dict(REFERENCE / "dekr" / "tiny" / "weights.npz"))
    image = str(REAL / "coco" / "000000000785.jpg")
    results = {}
    for name, weights in (("official", official), ("converted", converted)):
        out = tmp_path / name
        assert main(["infer", str(cfg_path), image, "--weights", str(weights), "--out", str(out), "--no-render",
                     "--no-progress"]) == 0
        results[name] = json.loads((out / "results.json").read_text())["images"][image]["people"]
    err = capsys.readouterr().err
    assert err.count("an official dekr checkpoint, converted in memory") == 1 and official in err
    assert results["official"] == results["converted"] and results["official"]
