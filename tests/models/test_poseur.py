"""Poseur: sizes equal the official models, training wiring (noise groups, losses, gradients), switches."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from regpose.data.keypoints import get_meta
from regpose.models.backbones import BackboneConfig
from regpose.models.base import total_loss
from regpose.models.layers.linear import inverse_sigmoid
from regpose.models.poseur import Poseur, PoseurConfig, poseur_losses
from conftest import REFERENCE

SIZES = json.loads((REFERENCE / "poseur" / "sizes_flops.json").read_text())
COCO = get_meta("coco")


def _tiny(**kw) -> PoseurConfig:
    base = dict(backbone=BackboneConfig("resnet18", kwargs={"stem_width": 16, "channels": [16, 32, 64, 128]}),
                embed_dim=64, num_decoder_layers=2, self_attn_heads=4, num_points=2, ffn_dim=128)
    base.update(kw)
    return PoseurConfig(**base)


@pytest.mark.parametrize("key,cfg", [
    ("r50_6dec_256x192", PoseurConfig()),
    ("r50_3dec_256x192", PoseurConfig(num_decoder_layers=3)),
    ("hrnet_w32_6dec_256x192", PoseurConfig(backbone=BackboneConfig("hrnet_w32"))),
])
def test_parameter_counts_equal_official(key, cfg):
    with torch.device("meta"):
        model = Poseur(cfg, COCO)
    ref = SIZES[key]
    assert sum(p.numel() for p in model.parameters()) == ref["params_total"]
    assert sum(p.numel() for p in model.backbone.parameters()) == ref["params_backbone"]
    flows = sum(p.numel() for m in (model.coarse_flow, model.decoder_flow) for p in m.parameters())
    assert flows == ref["params_flows"]
    assert len(model.state_dict()) == ref["state_dict_entries"]


# Official mmcls / mmpose MobileNetV2 (mmpose/models/backbones/mobilenet_v2.py): arch_settings (expand ratio,
# channels, blocks, stride) of layer1..7, stem ``conv1`` 3x3/2 to 32 and ``conv2`` 1x1 to 1280; every conv is a
# ConvModule (conv without bias + BN); InvertedResidual = [1x1 expand (if ratio != 1), 3x3 depthwise, 1x1 project].
MBV2_ARCH = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]


def _mmcls_mobilenetv2_shapes() -> dict[str, tuple]:
    """Names and shapes of the official MobileNetV2 (widen_factor 1: every width is already a multiple of 8)."""
    shapes = {}

    def conv_module(name, cin, cout, k, groups=1):
        shapes[f"{name}.conv.weight"] = (cout, cin // groups, k, k)
        shapes.update({f"{name}.bn.{p}": (cout,) for p in ("weight", "bias", "running_mean", "running_var")})

    conv_module("conv1", 3, 32, 3)
    cin = 32
    for i, (ratio, cout, blocks, _) in enumerate(MBV2_ARCH, 1):
        for j in range(blocks):
            hidden, k = cin * ratio, 0
            if ratio != 1:
                conv_module(f"layer{i}.{j}.conv.0", cin, hidden, 1)
                k = 1
            conv_module(f"layer{i}.{j}.conv.{k}", hidden, hidden, 3, groups=hidden)
            conv_module(f"layer{i}.{j}.conv.{k + 1}", hidden, cout, 1)
            cin = cout
    conv_module("conv2", cin, 1280, 1)
    return shapes


def _channel_mapper_params(in_channels, c=256) -> int:
    return sum(ci * c for ci in in_channels) + len(in_channels) * 2 * c      # 1x1 conv (no bias) + GroupNorm


def test_mobilenetv2_has_the_official_parameter_count():
    """Official count = mmpose MobileNetV2 (from its definition above) + ChannelMapper([24, 32, 96, 1280] -> 256)
    + the Poseur head, which does not depend on the backbone: the released R-50 total minus its backbone and
    its ChannelMapper (the HRNet-W32 release gives the same head)."""
    from regpose.config import load_config
    from regpose.models import build_model
    from conftest import REPO as ROOT

    backbone = sum(int(np.prod(s)) for k, s in _mmcls_mobilenetv2_shapes().items() if not k.endswith(("_mean", "_var")))
    heads = {key: SIZES[key]["params_total"] - SIZES[key]["params_backbone"] - _channel_mapper_params(ch)
             for key, ch in (("r50_6dec_256x192", (256, 512, 1024, 2048)), ("hrnet_w32_6dec_256x192", (32, 64, 128, 256)))}
    assert len(set(heads.values())) == 1
    official = backbone + _channel_mapper_params((24, 32, 96, 1280)) + heads["r50_6dec_256x192"]
    cfg = load_config(ROOT / "configs/poseur/poseur_mobilenetv2_coco_256x192.yaml")
    with torch.device("meta"):
        model = build_model(cfg)
    assert sum(p.numel() for p in model.backbone.parameters()) == backbone == 2_223_872
    assert model.backbone.channels == [24, 32, 96, 1280]
    assert sum(p.numel() for p in model.parameters()) == official == 11_355_800


def test_official_mmcls_mobilenetv2_file_initialises_the_whole_trunk(tmp_path, monkeypatch):
    """The mmcls://mobilenet_v2 checkpoint layout (``state_dict`` with ``backbone.`` names and a classifier), from a
    file:// URL: every trunk tensor comes from the file (mmcls names -> timm's), only the classifier is ignored."""
    from regpose.config import load_config
    from regpose.models import build_model
    from regpose.models.backbones import init_trunks
    from conftest import REPO as ROOT

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    gen = torch.Generator().manual_seed(0)
    official = {k: torch.rand(s, generator=gen) + 0.5 for k, s in _mmcls_mobilenetv2_shapes().items()}
    path = tmp_path / "mobilenet_v2_batch256_imagenet_20200708-3b2dc3af.pth"
    torch.save({"meta": {"mmcls_version": "0.1.0"},
                "state_dict": {**{f"backbone.{k}": v for k, v in official.items()},
                               "head.fc.weight": torch.rand(1000, 1280), "head.fc.bias": torch.rand(1000)}}, path)
    cfg = load_config(ROOT / "configs/poseur/poseur_mobilenetv2_coco_256x192.yaml",
                      [f"model.backbone.weights={path.as_uri()}"])
    model = build_model(cfg)
    report = init_trunks(model)["backbone"]
    assert report.coverage == 1.0 and report.missing == [] and report.ignored == ["head"]
    body = model.backbone.body.state_dict()
    for ours, theirs in (("conv_stem.weight", "conv1.conv.weight"), ("blocks.0.0.conv_dw.weight", "layer1.0.conv.0.conv.weight"),
                         ("blocks.0.0.bn2.running_var", "layer1.0.conv.1.bn.running_var"),
                         ("blocks.1.0.conv_pwl.weight", "layer2.0.conv.2.conv.weight"),
                         ("blocks.6.0.bn1.bias", "layer7.0.conv.0.bn.bias"),
                         ("conv_head.weight", "conv2.conv.weight"), ("bn2.weight", "conv2.bn.weight")):
        assert torch.equal(body[ours], official[theirs]), ours


def test_tiny_matches_official_tiny_size():
    model = Poseur(_tiny(), COCO)
    assert sum(p.numel() for p in model.parameters()) == 999_184      # reference/poseur/tiny/README.md


def test_inverse_sigmoid_clips_like_deformable_detr():
    x = torch.tensor([-0.5, 0.0, 0.25, 1.0, 1.5])
    expected = torch.tensor([np.log(1e-5), np.log(1e-5), np.log(1 / 3), -np.log(1e-5), -np.log(1e-5)], dtype=torch.float32)
    torch.testing.assert_close(inverse_sigmoid(x), expected)


def _targets(B, K=17):
    g = torch.Generator().manual_seed(3)
    w = (torch.rand(B, K, 1, generator=g) > 0.2).float().expand(B, K, 2).contiguous()
    return [{"coords": torch.rand(K, 2, generator=g) * 0.8 + 0.1, "coord_weights": w[i]} for i in range(B)]


def test_training_forward_has_noise_groups_and_every_parameter_gets_gradients():
    torch.manual_seed(0)
    model = Poseur(_tiny(), COCO).train()
    images = torch.randn(2, 3, 64, 48)
    out = model.forward_all(images, groups=4)
    assert out["mu"][0].shape == (2, 68, 2) and len(out["mu"]) == 2
    # group 0 is the clean proposal; noisy copies differ from it in exactly 3 x 4 points (same for the batch)
    clean = torch.rand(2, 17, 2) * 0.8 + 0.1
    content, pos, ref = model.init_queries(clean, groups=4)
    assert content.shape == pos.shape == (2, 68, 64)
    torch.testing.assert_close(ref[:, :17], clean)
    changed = (ref[:, 17:] != clean.repeat(1, 3, 1)).any(-1)
    assert changed.sum(1).tolist() == [12, 12] and torch.equal(changed[0], changed[1])
    assert ref.min() >= -0.7 and ref.max() <= 1.7
    losses = model(images, _targets(2))
    assert set(losses) == {"loss_coarse", "loss_dec0", "loss_dec1", "sigma_saturated"}
    assert losses["sigma_saturated"].item() == 0.0 and not losses["sigma_saturated"].requires_grad
    total_loss(losses).backward()
    # timm zero-inits the last BN gamma of each residual block, so those blocks' inner convs get no gradient at
    # step 0; everything else (neck, transformer, heads, both flows) must.
    missing = [n for n, p in model.named_parameters()
               if (p.grad is None or not p.grad.abs().sum() > 0) and not n.startswith("backbone.body.layer")]
    assert not missing, missing


def test_query_groups_do_not_see_each_other():
    """With dropout off, the clean group of a 4-group forward equals the 1-group forward (grouped self-attention)."""
    model = Poseur(_tiny(dropout=0.0), COCO).train()
    images = torch.randn(2, 3, 64, 48)
    torch.manual_seed(1)
    four = model.forward_all(images, groups=4)
    one = model.forward_all(images, groups=1)
    torch.testing.assert_close(four["mu"][-1][:, :17], one["mu"][-1], rtol=1e-5, atol=1e-6)


def test_decoder_loss_divisor_counts_groups():
    model = Poseur(_tiny(), COCO).eval()
    images = torch.randn(2, 3, 64, 48)
    t = _targets(2)
    target, weight = torch.stack([x["coords"] for x in t]), torch.stack([x["coord_weights"] for x in t])
    out = model.forward_all(images, groups=1)
    flows = model.coarse_flow, model.decoder_flow
    l1 = poseur_losses(out, target, weight, 1, *flows)
    out4 = {k: ([v.repeat(1, 4, 1) for v in out[k]] if k in ("mu", "sigma") else out[k]) for k in out}
    l4 = poseur_losses(out4, target, weight, 4, *flows)
    torch.testing.assert_close(l1["loss_dec1"], l4["loss_dec1"])        # 4 identical groups / (B*K*4)
    zero = poseur_losses(out, target, torch.zeros_like(weight), 1, *flows)
    assert all(v.item() == 0.0 for v in zero.values())


def test_poseur_losses_equal_official_case():
    """Poseur's loss wiring (coarse + per-layer RLE, both flows, group-counting divisors) on the official case."""
    from regpose.compat.poseur import build_reference_model

    model, _ = build_reference_model(REFERENCE / "poseur" / "tiny")
    case = np.load(REFERENCE / "poseur" / "tiny" / "rle_loss_case.npz")
    t = {k: torch.from_numpy(case[k]) for k in case.files}
    out = {"coarse_mu": t["enc_mu"], "coarse_sigma": t["enc_sigma"], "mu": list(t["dec_mu"]),
           "sigma": list(t["dec_sigma"])}
    with torch.no_grad():
        losses = poseur_losses(out, t["target"], t["target_weight"], 4, model.coarse_flow, model.decoder_flow)
    assert abs(losses["loss_coarse"].item() - float(case["loss_enc"])) <= 1e-5 * max(1.0, float(case["loss_enc"]))
    for i in range(2):
        assert abs(losses[f"loss_dec{i}"].item() - float(case["loss_dec"][i])) <= 1e-5 * float(case["loss_dec"][i])
    assert abs(total_loss(losses).item() - float(case["loss_total"])) <= 1e-5 * float(case["loss_total"])


def test_saturated_sigma_head_is_reported():
    """A last-layer sigma head pushed into sigmoid saturation shows up in the logged diagnostic (and only there:
    the loss terms stay finite)."""
    model = Poseur(_tiny(num_noise_groups=1), COCO).train()
    images, targets = torch.randn(2, 3, 64, 48), _targets(2)
    with torch.no_grad():
        model.sigma_branches[-1][-1].linear.bias.fill_(30.0)
    losses = model(images, targets)
    assert losses["sigma_saturated"].item() == 1.0
    assert all(torch.isfinite(v) for k, v in losses.items() if k.startswith("loss"))
    zero = {"coords": targets[0]["coords"], "coord_weights": torch.zeros_like(targets[0]["coord_weights"])}
    assert model(images[:1], [zero])["sigma_saturated"].item() == 0.0


def test_short_training_run_lowers_the_loss():
    torch.manual_seed(0)
    model = Poseur(_tiny(num_noise_groups=1, dropout=0.0), COCO).train()
    images, targets = torch.randn(2, 3, 64, 48), _targets(2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    losses = []
    for _ in range(12):
        loss = total_loss(model(images, targets))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert min(losses[-3:]) < losses[0] - 3.0, losses


@pytest.mark.parametrize("kw", [
    dict(share_decoder_weights=True, num_decoder_layers=3),
    dict(cross_attention="msda"),
    dict(self_attention=False),
    dict(query_init="learned"),
    dict(feature_levels=[3, 4]),
    dict(num_noise_groups=0),
])
def test_ablation_switches_run(kw):
    model = Poseur(_tiny(**kw), COCO).train()
    images = torch.randn(2, 3, 64, 48)
    losses = model(images, _targets(2))
    assert len([k for k in losses if k.startswith("loss")]) == 1 + model.cfg.num_decoder_layers
    total_loss(losses).backward()
    model.eval()
    mu, sigma = model(images)
    assert mu.shape == sigma.shape == (2, 17, 2)


def test_shared_decoder_weights_have_one_layer_of_parameters():
    a = sum(p.numel() for p in Poseur(_tiny(num_decoder_layers=3), COCO).parameters())
    b = sum(p.numel() for p in Poseur(_tiny(num_decoder_layers=3, share_decoder_weights=True), COCO).parameters())
    c = sum(p.numel() for p in Poseur(_tiny(num_decoder_layers=1), COCO).parameters())
    assert b == c < a


def test_flip_test_is_consistent_for_a_mirrored_crop():
    """Predicting the mirrored crop with flip test gives the mirrored predictions of the original crop."""
    model = Poseur(_tiny(), COCO).eval()
    images = torch.randn(1, 3, 64, 48)
    ident = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    meta = [{"inverse": ident, "box": [0, 0, 47, 63], "box_score": 1.0, "scale": [0.3, 0.4]}]
    T = type("T", (), {"flip": True})()
    for fusion in ("default", "type1", "type2"):
        model.cfg.flip_fusion = fusion
        a = model.predict({"images": images, "metas": meta}, T)[0].keypoints[0]
        b = model.predict({"images": images.flip(3), "metas": meta}, T)[0].keypoints[0]
        perm = COCO.flip_index                                    # left/right partners swapped
        np.testing.assert_allclose(b[perm, 0], 48 - a[:, 0], atol=5e-3)
        np.testing.assert_allclose(b[perm, 1:], a[:, 1:], atol=1e-4)


def test_transform_targets_map_back_to_the_annotations():
    """Eval transform on real COCO people: target * input size = keypoints in the crop, and meta['inverse'] maps
    them back to the annotated pixels; train transform gives weights only for labelled keypoints in the crop."""
    from conftest import REAL
    from regpose.config import load_config
    from regpose.data.datasets import TopDownDataset, load_records
    from regpose.data.keypoints import get_meta
    from regpose.models import get_method

    cfg = load_config({"method": "poseur", "data": {"input_size": [192, 256],
                                                    "val": {"ann_files": [str(REAL / "coco" / "test_coco.json")]}}})
    records = load_records(cfg.data.val, "coco")
    for train in (False, True):
        ds = TopDownDataset(records, get_method("poseur").transform(cfg, train))
        for i in range(len(ds)):
            s = ds[i]
            assert s["image"].shape == (3, 256, 192)
            coords, w = s["target"]["coords"].numpy(), s["target"]["coord_weights"].numpy()
            meta = s["meta"]
            rec = next(r for r in records if r.image_id == meta["image_id"])
            kp = rec.keypoints[meta["person_index"]]
            crop = coords.astype(np.float64) * [192, 256]
            back = crop @ np.asarray(meta["inverse"])[:, :2].T + np.asarray(meta["inverse"])[:, 2]
            if meta.get("flipped"):   # flipped samples carry mirrored left/right identities
                kp = kp[get_meta("coco").flip_index]
            labelled = kp[:, 2] > 0
            inside = (crop[:, 0] >= 0) & (crop[:, 0] <= 191) & (crop[:, 1] >= 0) & (crop[:, 1] <= 255)
            np.testing.assert_array_equal(w[:, 0], (labelled & inside).astype(np.float32))
            np.testing.assert_allclose(back[labelled], kp[labelled, :2], atol=1e-3)


def test_onnx_export_matches_pytorch(tmp_path):
    """The eval network (crop -> last layer's mu, sigma) exports with the grid_sample sampler, dynamic batch."""
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    model = Poseur(_tiny(), COCO).eval()
    path = tmp_path / "poseur.onnx"
    torch.onnx.export(model, (torch.randn(2, 3, 64, 48),), str(path), dynamo=False, opset_version=17,
                      input_names=["images"], output_names=["mu", "sigma"],
                      dynamic_axes={"images": {0: "b"}, "mu": {0: "b"}, "sigma": {0: "b"}})
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "GridSample" in ops and "Loop" not in ops
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 64, 48)
    got = sess.run(None, {"images": x.numpy()})
    with torch.no_grad():
        want = model(x)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), atol=1e-5)


@pytest.mark.parametrize("query_init,reference_tensors", [("coarse", 0), ("learned", 2)])
def test_official_lr_rules_train_sampling_offsets_and_learned_reference_points_at_a_tenth(query_init,
                                                                                            reference_tensors):
    """Official paramwise_cfg: names containing 'sampling_offsets' or 'reference_points' at lr x0.1. The released
    model (coarse queries) has only the offsets (weight + bias per decoder layer); the learned-query baseline also
    has the reference-point linear. Building the optimizer of the shipped R50 config must not fail on either."""
    from regpose.config import load_config
    from regpose.engine.schedule import build_optimizer
    from conftest import REPO

    cfg = load_config(REPO / "configs/poseur/poseur_r50_coco_256x192.yaml", [f"model.query_init={query_init}"])
    with torch.device("meta"):
        model = Poseur(cfg.model, COCO)
    groups = {g["rule"]: g for g in build_optimizer(model, cfg.train).param_groups}
    offsets = groups["sampling_offsets"]
    assert len(offsets["names"]) == 2 * 6 and offsets["lr"] == pytest.approx(1e-4)
    assert len(groups.get("reference_proj", {"names": []})["names"]) == reference_tensors
    assert groups[None]["lr"] == pytest.approx(1e-3)


def test_transformer_computes_in_float32_under_autocast_as_the_official_force_fp32():
    """Official: Poseur.forward is auto_fp16 (backbone, neck, per-layer output heads in low precision) while
    PoseurTransformer.forward (coarse head, keypoint encoder, decoder) is force_fp32. CPU bf16 autocast stands in
    for CUDA fp16: the dtype each module computes in is recorded by forward hooks."""
    torch.manual_seed(0)
    model = Poseur(_tiny(), COCO).train()
    seen: dict[str, torch.dtype] = {}

    def record(name):
        def hook(_module, _inputs, output):
            first = output[0] if isinstance(output, (tuple, list)) else output
            seen[name] = first.dtype
        return hook

    watched = {"backbone": model.backbone, "neck": model.neck.convs[0], "coarse_head": model.coarse_head,
               "query_proj": model.query_proj, "cross_attn": model.layers[0].cross_attn,
               "decoder_layer": model.layers[-1], "coord_branch": model.coord_branches[-1],
               "coord_output_branch": model.coord_output_branches[-1], "sigma_branch": model.sigma_branches[-1]}
    for name, module in watched.items():
        module.register_forward_hook(record(name))
    images = torch.randn(2, 3, 64, 48)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(images, _targets(2))
    low = {"backbone", "neck", "coord_output_branch", "sigma_branch"}
    assert {k: v for k, v in seen.items() if k in low} == {k: torch.bfloat16 for k in low}
    assert {k: v for k, v in seen.items() if k not in low} == {k: torch.float32 for k in watched if k not in low}
    assert torch.isfinite(total_loss(losses))


TINY_YAML = {"backbone": {"name": "resnet18", "kwargs": {"stem_width": 16, "channels": [16, 32, 64, 128]}},
             "embed_dim": 64, "num_decoder_layers": 2, "self_attn_heads": 4, "num_points": 2, "ffn_dim": 128}


def test_runtime_options_reach_the_network_and_leave_its_outputs_equal():
    """``runtime.attention_sampler`` and ``runtime.channels_last`` configure the built Poseur (the builder passes them
    explicitly); they change how it computes, never what."""
    from regpose.config import load_config
    from regpose.models import build_model
    from regpose.models.layers.deform_attn import MultiScaleDeformableAttention

    torch.manual_seed(0)
    default = build_model(load_config({"method": "poseur", "model": TINY_YAML})).eval()
    other = build_model(load_config({"method": "poseur", "model": TINY_YAML},
                                    ["runtime.attention_sampler=grid_sample", "runtime.channels_last=false"])).eval()

    def samplers(m):
        return {a.sampler for a in m.modules() if isinstance(a, MultiScaleDeformableAttention)}

    def stem(m):
        return next(c.weight for c in m.modules() if isinstance(c, torch.nn.Conv2d) and c.kernel_size[0] > 1)

    assert samplers(default) == {"auto"} and samplers(other) == {"grid_sample"}
    assert stem(default).is_contiguous(memory_format=torch.channels_last) and not stem(default).is_contiguous()
    assert stem(other).is_contiguous()
    other.load_state_dict(default.state_dict())
    images = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        for a, b in zip(default(images), other(images)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("old,new", [("sampler", "attention_sampler"), ("channels_last", "channels_last")])
def test_former_model_switches_name_their_runtime_place(old, new):
    from regpose.config import ConfigError, load_config

    for model, overrides in (({old: "gather"}, []), ({}, [f"model.{old}=gather"])):
        with pytest.raises(ConfigError) as e:
            load_config({"method": "poseur", "model": model}, overrides)
        assert str(e.value) == f"unknown config key 'model.{old}' (did you mean 'runtime.{new}'?)"
