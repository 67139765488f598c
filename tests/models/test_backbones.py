"""The one backbone builder: detectron2 freezing, the Swin-for-detection wrapper, the MobileNetV2 head level, the
config vocabulary (shorthand, partial sections, former keys, bad names) and SyncBatchNorm conversion."""
from __future__ import annotations

import dataclasses

import pytest
import timm
import torch

from regpose.cli import main
from regpose.config import ConfigError, load_config
from regpose.engine.dist import convert_sync_batchnorm
from regpose.models.backbones import BackboneConfig, SwinFeatures, build_backbone
from conftest import REPO

pytestmark = pytest.mark.usefixtures("single_thread")

TINY_R50 = {"channels": [4, 8, 16, 32], "stem_width": 16, "zero_init_last": False}


def test_frozen_bn_and_freeze_at_follow_detectron2():
    body = build_backbone(BackboneConfig("resnet50", norm="frozen_bn", freeze_at=2, kwargs=TINY_R50), (1, 2, 3, 4)).body
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in body.modules())
    frozen = {n.split(".")[0] for n, p in body.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "layer1"}                                    # stem + res2
    assert all(p.requires_grad for n, p in body.named_parameters() if n.startswith(("layer2", "layer4")))


def test_freeze_at_one_freezes_the_hrnet_stem_only():
    """HRNet's feature points are named after modules it does not have ('stem'): the stem is conv1..act2."""
    with torch.device("meta"):
        body = build_backbone(BackboneConfig("hrnet_w32", freeze_at=1), (1, 2, 3, 4)).body
    frozen = {n.split(".")[0] for n, p in body.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "bn1", "conv2", "bn2"}
    with pytest.raises(ConfigError, match="freeze_at: expected 0..5"):
        with torch.device("meta"):
            build_backbone(BackboneConfig("hrnet_w32", freeze_at=6), (1, 2, 3, 4))


def test_swin_backbone_follows_detectron2_swin():
    """Swin for detection pads each map to whole windows *then* rolls (timm rolls then pads), shifts windows
    in every odd block and normalises each output level."""
    import types

    import torch.nn.functional as F
    from timm.models.swin_transformer import SwinTransformerBlock, window_partition, window_reverse

    torch.manual_seed(0)
    swin = build_backbone(BackboneConfig("swin_tiny_patch4_window7_224"), (0, 1, 2, 3)).eval()
    assert isinstance(swin, SwinFeatures)
    blocks = [m for m in swin.modules() if isinstance(m, SwinTransformerBlock)]
    assert all(any(b.shift_size) == (i % 2 == 1) for i, b in enumerate(blocks[:2]))
    assert any(blocks[-1].shift_size)                        # shifted even where the map is one window wide
    block = blocks[1]
    x = torch.randn(1, 10, 13, block.norm1.normalized_shape[0])
    with torch.no_grad():
        ws, ss = block.window_size, block.shift_size
        xp = F.pad(x, (0, 0, 0, 1, 0, 4))                   # pad 10x13 -> 14x14 first ...
        xr = torch.roll(xp, (-ss[0], -ss[1]), (1, 2))       # ... then roll
        win = window_partition(xr, ws).view(-1, ws[0] * ws[1], x.shape[-1])
        out = block.attn(win, mask=block.get_attn_mask(xr)).view(-1, ws[0], ws[1], x.shape[-1])
        ref = torch.roll(window_reverse(out, ws, 14, 14), ss, (1, 2))[:, :10, :13]
        torch.testing.assert_close(block._attn(x), ref)
        timm_order = types.MethodType(SwinTransformerBlock._attn, block)(x)
    assert not torch.allclose(timm_order, ref)                 # the orders really differ on padded maps
    feats = swin(torch.randn(1, 3, 64, 96))
    assert [f.shape[1] for f in feats] == [96, 192, 384, 768] and feats[0].shape[-2:] == (16, 24)
    assert swin.strides == [4, 8, 16, 32]


def test_mobilenetv2_head_level_is_the_1x1_conv_to_1280():
    """mmcls MobileNetV2 out_indices (1, 2, 4, 7): strides 4 / 8 / 16 from the blocks, stride 32 from the 1x1 head
    conv (320 -> 1280, no bias) + BN + ReLU6 applied to the last block, as mmcls' ``conv2`` ConvModule."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    bb = build_backbone(BackboneConfig("mobilenetv2_100", kwargs={"head_level": True}), (1, 2, 3, 4)).eval()
    assert bb.channels == [24, 32, 96, 1280] and bb.strides == [4, 8, 16, 32]
    bn = bb.body.bn2
    bn.running_mean.uniform_(-1, 1)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        blocks = bb.body(x)                       # timm's feature net alone: the block outputs
        feats = bb(x)
        head = F.relu6(F.batch_norm(F.conv2d(blocks[-1], bb.body.conv_head.weight), bn.running_mean,
                                    bn.running_var, bn.weight, bn.bias, eps=bn.eps))
    assert [f.shape[1] for f in blocks] == [24, 32, 96, 320] and bb.body.conv_head.bias is None
    for a, b in zip(feats[:3], blocks[:3]):
        assert torch.equal(a, b)
    torch.testing.assert_close(feats[-1], head)


# ----------------------------------------------------------------------------------------------------------
# Config vocabulary
# ----------------------------------------------------------------------------------------------------------
def test_shorthand_and_partial_sections_keep_the_method_defaults():
    cfg = load_config(REPO / "configs/querypose/querypose_r50_coco.yaml", ["model.backbone.weights=none"])
    assert cfg.model.backbone == BackboneConfig("resnet50", "none", "frozen_bn", 2)
    cfg = load_config({"method": "querypose", "model": {"backbone": "resnet101"}})
    assert cfg.model.backbone == BackboneConfig("resnet101", norm="frozen_bn", freeze_at=2)   # QueryPose defaults
    cfg = load_config({"method": "poseur", "model": {"backbone": {"kwargs": {"drop_path_rate": 0.1}}}})
    assert cfg.model.backbone == BackboneConfig("resnet50", kwargs={"drop_path_rate": 0.1})
    # a partial override of a section a config gave as a shorthand refines it (the name stays)
    cfg = load_config(REPO / "configs/rle/rle_tiny_synthetic.yaml", ["model.backbone.kwargs.stem_width=8"])
    assert cfg.model.backbone == BackboneConfig("resnet18", kwargs={"stem_width": 8})
    cfg = load_config({"method": "querypose", "model": {"backbone": "resnet101"}}, ["model.backbone.freeze_at=3"])
    assert cfg.model.backbone == BackboneConfig("resnet101", norm="frozen_bn", freeze_at=3)


@pytest.mark.parametrize("old,new", [("pretrained", "weights"), ("backbone_weights", "weights"),
                                     ("frozen_bn", "norm"), ("backbone_norm", "norm"), ("backbone_kwargs", "kwargs")])
def test_former_keys_name_their_new_place(old, new):
    with pytest.raises(ConfigError) as e:
        load_config({"method": "directpose", "model": {old: "x"}})
    assert str(e.value) == f"unknown config key 'model.{old}' (did you mean 'model.backbone.{new}'?)"


def test_weights_value_grammar():
    for ok in ("none", "timm:resnet50.tv_in1k", "https://x.org/a.pth", "file:///tmp/a.pkl", "r50.npz", "a/b.pt"):
        BackboneConfig(weights=ok)
    with pytest.raises(ConfigError, match="model.backbone.weights: expected none, timm:"):
        load_config({"method": "poseur", "model": {"backbone": {"weights": ""}}})


def test_bad_backbone_name_is_one_line_with_close_timm_names(capsys):
    code = main(["train", str(REPO / "configs/poseur/poseur_tiny_synthetic.yaml"), "model.backbone=resnet999"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1
    assert err[0].startswith("error: model.backbone.name: 'resnet999' is not a timm model (did you mean ")
    assert "'resnet50'" in err[0]


# ----------------------------------------------------------------------------------------------------------
# SyncBatchNorm
# ----------------------------------------------------------------------------------------------------------
def _shipped_backbones() -> dict[str, BackboneConfig]:
    """Every distinct trunk of configs/ (name, norm, kwargs)."""
    out = {}
    for path in sorted((REPO / "configs").glob("*/*.yaml")):
        if path.parent.name != "_base_":
            b = load_config(path).model.backbone
            out.setdefault(f"{b.name}-{b.norm}-{sorted(b.kwargs.items())}", b)
    return out


def _reduced(b: BackboneConfig) -> BackboneConfig:
    """Fewer blocks where the full trunk is slow to build on a CPU (Swin-L 6 s, HRNet-W48 3 s, R-101/152 2 s):
    the same layer types (the conversion acts per layer type), fewer repeats."""
    if b.name.startswith("hrnet"):
        base = timm.models.hrnet.cfg_cls[b.name]
        stages = {f"stage{i}": {**base[f"stage{i}"], "num_modules": 1,
                                "num_blocks": (1,) * len(base[f"stage{i}"]["num_blocks"])} for i in range(1, 5)}
        return dataclasses.replace(b, kwargs={**b.kwargs, **stages})
    if b.name in ("resnet101", "resnet152"):
        return dataclasses.replace(b, kwargs={**b.kwargs, "layers": [1, 1, 1, 1]})
    if b.name.startswith("swin_large"):
        return dataclasses.replace(b, kwargs={**b.kwargs, "depths": [2, 2, 2, 2]})
    return b


@pytest.mark.parametrize("key", sorted(_shipped_backbones()))
def test_sync_batchnorm_conversion_keeps_the_function_of_every_shipped_backbone(key):
    """Eval outputs before and after the trainer's SyncBN conversion are identical: fused BatchNorm-activations
    (MobileNetV2's ReLU6) survive, FrozenBatchNorm stays frozen."""
    b = _reduced(_shipped_backbones()[key])
    torch.manual_seed(0)
    model = build_backbone(b, (0, 1, 2, 3) if b.name.startswith("swin") else (1, 2, 3, 4))
    for m in model.modules():                     # non-trivial statistics, so a dropped op shows
        if hasattr(m, "running_var") and m.running_var is not None:
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        synced = convert_sync_batchnorm(model).eval()
        after = synced(x)
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules()) or b.norm == "frozen_bn" or \
        b.name.startswith("swin")
    for u, v in zip(before, after):
        assert torch.equal(u, v)
