"""QueryPose official compatibility: reference check on tiny / tiny_light, every manifest key converted with
matching shapes, parameter counts equal the official ones, official config mapping."""
from __future__ import annotations

import json
import re

import pytest
import torch

from regpose.compat import querypose as cq
from regpose.config import load_config
from regpose.errors import CheckpointError
from regpose.models import build_model
from conftest import REFERENCE, REPO

QP = REFERENCE / "querypose"

# (manifest, our config, official nn.Parameter count from README_measurements.md)
MANIFESTS = [
    ("manifest_r50.tsv", "querypose_r50_coco.yaml", 322_641_480),
    ("manifest_r50_light.tsv", "querypose_r50_light_coco.yaml", 188_723_016),
    ("manifest_hrnet32.tsv", "querypose_hrnet_w32_coco.yaml", 194_302_792),
    ("manifest_hrnet32_nonlight.tsv", "querypose_hrnet_w32_nonlight_coco.yaml", 328_221_256),
    ("manifest_hrnet48.tsv", "querypose_hrnet_w48_coco.yaml", 364_485_320),
    ("manifest_hrnet48_light.tsv", "querypose_hrnet_w48_light_coco.yaml", 230_566_856),
    ("manifest_swinL.tsv", "querypose_swin_l_coco.yaml", 493_938_972),
]


pytestmark = pytest.mark.usefixtures("single_thread")


def _fake_official(manifest: str) -> dict[str, torch.Tensor]:
    state = {}
    for line in (QP / manifest).read_text().splitlines():
        key, shape, dtype = line.split("\t")
        dims = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
        state[key] = torch.empty(dims, dtype=getattr(torch, dtype), device="meta")
    return state


@pytest.mark.parametrize("folder", ["tiny", "tiny_light"])
def test_reference_check_passes(folder):
    rows = cq.reference_check(QP / folder)
    names = {r[0] for r in rows}
    # per-stage outputs, final detections, FPN maps, every training loss and every stage's matches are compared
    for must in ("stage_class_logits", "stage_boxes_xyxy", "stage_kps_mu", "stage_kps_sigma", "img0_final_keypoints_xy",
                 "img1_final_boxes_xyxy", "feat_p2", "train_loss_kps (rel)", "train_loss_ce_0 (rel)", "match_stage1_img1"):
        assert must in names
    bad = [r for r in rows if not r[1] <= r[2]]
    assert not bad, bad


def test_reference_check_direct_convolutions():
    rows = cq.reference_check(QP / "tiny", conv_impl="direct")
    assert all(r[1] <= r[2] for r in rows), [r for r in rows if r[1] > r[2]]


@pytest.mark.parametrize("manifest,config,params", MANIFESTS)
def test_every_manifest_key_converts_to_our_model(manifest, config, params):
    cfg = load_config(REPO / "configs" / "querypose" / config)
    with torch.device("meta"):
        model = build_model(cfg)
    assert sum(p.numel() for p in model.parameters()) == params
    official = _fake_official(manifest)
    ours, dropped = cq.convert_state_dict(official, return_dropped=True)
    own = model.state_dict()
    assert set(ours) == set(own), (sorted(set(own) - set(ours))[:5], sorted(set(ours) - set(own))[:5])
    assert all(tuple(ours[k].shape) == tuple(own[k].shape) for k in ours)
    # every official key is consumed: carried over as a tensor, merged (per-part residual Linears), or a
    # derived Swin index table
    carried = {id(v) for v in ours.values()}
    for key, value in official.items():
        assert (id(value) in carried or key in dropped
                or re.search(r"residual_filter\.\d+\.", key)), key
    assert all(re.search(r"relative_position_index$", k) for k in dropped)


def test_unused_official_keys_are_dropped_only_on_request():
    official = _fake_official("manifest_hrnet48.tsv")
    ours, dropped = cq.convert_state_dict(official, keep_unused=False, return_dropped=True)
    unused = [k for k in official if any(re.search(p, k) for p in cq.UNUSED_KEY_PATTERNS)]
    assert sorted(dropped) == sorted(unused)
    assert len(unused) == 6 * 3 + 2    # SIM fc3 + norm_fc3 (w, b) per stage, lateral_conv.0, fpn_conv.4
    cfg = load_config(REPO / "configs" / "querypose" / "querypose_hrnet_w48_coco.yaml",
                      ["model.keep_unused_official=false"])
    with torch.device("meta"):
        model = build_model(cfg)
    assert set(ours) == set(model.state_dict())


def test_unknown_official_key_is_a_clear_error():
    official = _fake_official("manifest_r50_light.tsv")
    official["head.pose_head_series.0.surprise.weight"] = torch.empty(3, device="meta")
    with pytest.raises(CheckpointError, match="surprise"):
        cq.convert_state_dict(official)


def test_swin_relative_position_index_is_checked():
    ws = 7
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + ws - 1
    table = rel[..., 0] * (2 * ws - 1) + rel[..., 1]
    cq._check_relative_position_index("a.relative_position_index", table)
    bad = table.clone()
    bad[0, 0] = 5
    with pytest.raises(CheckpointError, match="relative-position"):
        cq._check_relative_position_index("a.relative_position_index", bad)


def test_official_config_mapping():
    cfg = cq.config_from_official(json.loads((QP / "tiny" / "config.json").read_text()))
    assert cfg["backbone"] == {"name": "resnet50", "kwargs": {"channels": [4, 8, 16, 32], "stem_width": 16},
                               "norm": "frozen_bn", "freeze_at": 2}
    assert cfg["neck"] == "fpn"
    assert (cfg["hidden_dim"], cfg["num_proposals"], cfg["num_stages"], cfg["part_dim"], cfg["num_convs"]) == \
        (32, 8, 2, 16, 3)
    assert cfg["light"] is False
    light = cq.config_from_official(json.loads((QP / "tiny_light" / "config.json").read_text()))
    assert light["light"] is True
    assert cq.config_from_official({"resolved": {"MODEL.BACKBONE.NAME": "build_hrnet_fpnv1_backbone"}})["neck"] == \
        "hrfpn_v1"
