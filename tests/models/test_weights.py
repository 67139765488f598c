"""Trunk initialisation files: detectron2 pickles through the numpy-only unpickler, URLs through torch hub's cache,
one-line errors offline, and partial loading that names what stayed at init (pose-HRNet into QueryPose).
Nothing is downloaded: every file is written by the test."""
from __future__ import annotations

import os
import pickle
import re

import numpy as np
import pytest
import timm
import torch

from regpose.data.keypoints import get_meta
from regpose.errors import CheckpointError
from regpose.models.backbones import BackboneConfig, build_backbone, init_trunks
from regpose.models.querypose import QueryPose, QueryPoseConfig
from regpose.models.weights import fetch_trunk_state, load_partial, read_state_dict

pytestmark = pytest.mark.usefixtures("single_thread")

TINY_R50 = {"channels": [4, 8, 16, 32], "stem_width": 16}
FIX = re.compile(r"model\.backbone\.weights=/path/to/file .*model\.backbone\.weights=none")


def _tv_to_d2(key: str) -> str:
    """torchvision ResNet names -> detectron2's, the renaming of detectron2's convert-torchvision-to-d2.py."""
    if "layer" not in key:
        key = "stem." + key
    for t in (1, 2, 3, 4):
        key = key.replace(f"layer{t}", f"res{t + 1}")
    for t in (1, 2, 3):
        key = key.replace(f"bn{t}", f"conv{t}.norm")
    return key.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")


def _random_trunk(cfg: BackboneConfig, seed: int):
    torch.manual_seed(seed)
    trunk = build_backbone(cfg, (1, 2, 3, 4))
    with torch.no_grad():
        for v in trunk.body.state_dict().values():
            if v.is_floating_point():
                v.uniform_(0.5, 1.5)
    return trunk


def test_detectron2_pkl_loads_every_tensor_of_a_frozen_resnet(tmp_path):
    """torchvision's R-50 in detectron2's R-50.pkl layout (names, numpy arrays, the stray ``stem.fc``)."""
    src = _random_trunk(BackboneConfig("resnet50", kwargs=TINY_R50), seed=1)
    model = {_tv_to_d2(k): v.numpy() for k, v in src.body.state_dict().items()}
    model.update({"stem.fc.weight": np.zeros((10, 32), np.float32), "stem.fc.bias": np.zeros(10, np.float32)})
    path = tmp_path / "R-50.pkl"
    path.write_bytes(pickle.dumps({"model": model, "__author__": "torchvision", "matching_heuristics": True},
                                  protocol=2))
    dst = build_backbone(BackboneConfig("resnet50", weights=str(path), norm="frozen_bn", freeze_at=2,
                                        kwargs=TINY_R50), (1, 2, 3, 4))
    report = dst.load_initial_weights()
    assert report.coverage == 1.0 and report.left_at_init == [] and report.ignored == ["stem.fc"]
    ours = dst.body.state_dict()
    for k, v in src.body.state_dict().items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(ours[k], v), k                 # FrozenBN buffers included


def test_a_pickle_carrying_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = tmp_path / "R-50.pkl"
    path.write_bytes(pickle.dumps({"model": {"stem.conv1.weight": Evil()}}))
    with pytest.raises(CheckpointError) as e:
        read_state_dict(path)
    assert "refused" in str(e.value) and "system" in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()


def test_file_url_is_downloaded_once_into_torch_hubs_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    src = _random_trunk(BackboneConfig("resnet18", kwargs={"channels": [8, 16, 32, 64]}), seed=2)
    (tmp_path / "files").mkdir()
    path = tmp_path / "files" / "r18.pth"
    torch.save({"state_dict": src.body.state_dict()}, path)
    url = path.as_uri()
    first = fetch_trunk_state(url)
    cached = tmp_path / "torch_home" / "hub" / "checkpoints" / "r18.pth"
    assert cached.is_file()
    path.unlink()                                             # the second read comes from the cache
    second = fetch_trunk_state(url)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_unreachable_url_and_offline_hub_are_one_line_with_the_way_out(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf"))
    for weights in ("http://127.0.0.1:9/R-50.pkl", "timm:resnet18.tv_in1k", "missing/pose_hrnet_w32_384x288.pth"):
        with pytest.raises(CheckpointError) as e:
            fetch_trunk_state(weights)
        msg = str(e.value)
        assert "\n" not in msg and FIX.search(msg), msg
    assert "deep-high-resolution-net" in msg                  # where the pose-HRNet file comes from
    with pytest.raises(CheckpointError, match="unknown timm pretrained tag 'resnet18.nope'.*resnet18.tv_in1k"):
        fetch_trunk_state("timm:resnet18.nope")


def test_a_file_for_another_network_is_refused():
    """An HRNet file into a ResNet-50 trunk: only the stem norm and the first stage fit (0.9 %, under 10 %)."""
    hrnet = timm.create_model("hrnet_w18_small").state_dict()
    r50 = build_backbone(BackboneConfig("resnet50"), (1, 2, 3, 4))
    before = {k: v.clone() for k, v in r50.body.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"only 0\.\d% of the parameters fit \(minimum 10%\)"):
        load_partial(r50.body, hrnet, "hrnet.pth")
    assert all(torch.equal(before[k], v) for k, v in r50.body.state_dict().items())     # nothing changed


# ----------------------------------------------------------------------------------------------------------
# QueryPose HRNet from a COCO pose-HRNet checkpoint (issue 17, defect 3)
# ----------------------------------------------------------------------------------------------------------
def _small_hrnet_stages() -> dict:
    """HRNet-W32's stages with fewer blocks / modules and narrower branches (the same structure, smaller)."""
    base = timm.models.hrnet.cfg_cls["hrnet_w32"]
    widths = (8, 16, 32, 64)
    out = {"stage1": {**base["stage1"], "num_blocks": (1,), "num_channels": (16,)}}
    for s, modules in ((2, 1), (3, 1), (4, 2)):
        out[f"stage{s}"] = {**base[f"stage{s}"], "num_modules": modules, "num_blocks": (1,) * s,
                            "num_channels": widths[:s]}
    return out


def test_pose_hrnet_checkpoint_loads_into_querypose_with_the_missing_fuse_layers_named(tmp_path):
    """pose-HRNet builds its last stage-4 module with multi_scale_output=False: the file has no fuse layers for
    branches 1-3 there (and a heatmap ``final_layer``). Everything else loads; exactly those modules keep their
    initialisation, the heatmap head is ignored, as the official non-strict load."""
    stages = _small_hrnet_stages()
    torch.manual_seed(4)
    pose = timm.create_model("hrnet_w32", **stages)
    pose.stage4, _ = pose._make_stage(pose.stage4_cfg, list(stages["stage4"]["num_channels"]),
                                      multi_scale_output=False)
    state = {k: v for k, v in pose.state_dict().items()
             if not k.startswith(("incre_modules", "downsamp_modules", "final_layer", "classifier"))}
    state.update({"final_layer.weight": torch.randn(17, 8, 1, 1), "final_layer.bias": torch.randn(17)})
    path = tmp_path / "pose_hrnet_w32_384x288.pth"
    torch.save(state, path)

    cfg = QueryPoseConfig(backbone=BackboneConfig("hrnet_w32", weights=str(path), kwargs=stages), neck="hrfpn",
                          hidden_dim=32, num_proposals=4, num_stages=1, num_heads=4, dim_feedforward=32,
                          dim_dynamic=8, part_dim=16, num_convs=1)
    model = QueryPose(cfg, get_meta("coco"))
    report = init_trunks(model)["backbone"]
    assert report.left_at_init == [f"stage4.1.fuse_layers.{b}" for b in (1, 2, 3)]
    assert report.ignored == ["final_layer"] and report.mismatched == []
    ours = model.backbone.body.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in state.items() if k in ours)
    assert 0.5 < report.coverage < 1.0
    assert "left at init: stage4.1.fuse_layers.1, stage4.1.fuse_layers.2, stage4.1.fuse_layers.3" in report.summary()


@pytest.mark.parametrize("kwargs", [{}, {"stem_width": 16, "channels": [16, 32, 64, 128]}])
def test_backbone_loads_local_pretrained_weights(tmp_path, kwargs):
    src = build_backbone(BackboneConfig("resnet18", kwargs=kwargs), (1, 2, 3, 4))
    for p in src.parameters():
        torch.nn.init.normal_(p)
    path = tmp_path / "r18.pth"
    torch.save(src.body.state_dict(), path)
    dst = build_backbone(BackboneConfig("resnet18", weights=str(path), kwargs=kwargs), (1, 2, 3, 4))
    assert dst.load_initial_weights().coverage == 1.0
    for (n, a), (_, b) in zip(src.body.state_dict().items(), dst.body.state_dict().items()):
        assert torch.equal(a, b), n
