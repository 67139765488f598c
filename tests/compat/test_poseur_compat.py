"""Official Poseur checkpoints: every manifest key converts with matching shapes; the reduced official model's
outputs are reproduced (reference check)."""
from __future__ import annotations

import json

import pytest
import torch

from regpose.compat.poseur import config_from_official, convert_state_dict, reference_check
from regpose.data.keypoints import get_meta
from regpose.errors import CheckpointError
from regpose.models.backbones import BackboneConfig
from regpose.models.poseur import Poseur, PoseurConfig
from conftest import REFERENCE

POSEUR = REFERENCE / "poseur"


def _fake_official(manifest: str) -> dict[str, torch.Tensor]:
    state = {}
    for line in (POSEUR / manifest).read_text().splitlines():
        key, shape, dtype = line.split("\t")
        state[key] = torch.empty(eval(shape), dtype=getattr(torch, dtype), device="meta")
    return state


@pytest.mark.parametrize("manifest,cfg", [
    ("manifest_r50_256x192.tsv", PoseurConfig()),
    ("manifest_hrnet_w32_256x192.tsv", PoseurConfig(backbone=BackboneConfig("hrnet_w32"))),
])
def test_every_manifest_key_is_consumed_with_matching_shapes(manifest, cfg):
    official = _fake_official(manifest)
    ours = convert_state_dict(official)
    with torch.device("meta"):
        model = Poseur(cfg, get_meta("coco"))
    expected = model.state_dict()
    assert len(ours) == len(official) == len(expected)
    assert set(ours) == set(expected)
    bad = [k for k, v in ours.items() if v.shape != expected[k].shape or v.dtype != expected[k].dtype]
    assert not bad, bad[:5]
    model.load_state_dict(ours, strict=True, assign=True)


def test_unknown_official_key_is_reported_by_name():
    with pytest.raises(CheckpointError, match="keypoint_head.mystery"):
        convert_state_dict({"keypoint_head.mystery.weight": torch.zeros(1)})


def test_config_from_official_reads_the_reduced_model():
    cfg = config_from_official(json.loads((POSEUR / "tiny" / "config.json").read_text()))
    assert cfg["backbone"] == {"name": "resnet18", "kwargs": {"stem_width": 16, "channels": [16, 32, 64, 128]}}
    assert (cfg["embed_dim"], cfg["num_decoder_layers"], cfg["self_attn_heads"], cfg["num_points"], cfg["ffn_dim"]) == (64, 2, 4, 2, 128)
    assert cfg["cross_attention"] == "emsda" and cfg["feature_levels"] == [1, 2, 3, 4]


def test_reference_check_passes_every_array():
    rows = reference_check(POSEUR / "tiny")
    names = {n for n, _, _ in rows}
    for required in ("coarse_mu", "dec_mu", "dec_sigma", "dec_hidden", "inter_references", "flipped_dec_mu",
                     "preds_noflip[xy px]", "preds_flip_default[xy px]", "preds_flip_type1[score]",
                     "preds_flip_type2[xy px]", "instance_score_rle_flip_type2",
                     "preds_noflip[xy px, crop made here]", "image (top-down crop + normalisation, one grey level)"):
        assert required in names
    failed = [(n, e, t) for n, e, t in rows if not e <= t]
    assert not failed, failed
