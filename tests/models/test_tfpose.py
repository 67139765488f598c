"""TFPose network, losses and decoding: structure and FLOPs of the paper's configurations (meta device), Eq. 4
refinement, ablation switches, hand-computed losses, gradients to every parameter, the auxiliary heatmap branch
absent from the inference / exported graph, flip test, and a short run whose loss falls."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from regpose.data.keypoints import get_meta, make_layout
from regpose.engine.bench import count_flops
from regpose.models.backbones import BackboneConfig
from regpose.models.base import total_loss
from regpose.models.layers.linear import inverse_sigmoid
from regpose.models.tfpose import TFPose, TFPoseConfig
from regpose.models.tfpose.loss import coordinate_l1_loss, joints_mse_loss
from regpose.models.tfpose.model import deformable_sampling_flops
from regpose.models.topdown_regression import flip_back_coords

FLIP_PAIRS = [[1, 2], [3, 4]]
#: a 5-keypoint layout (the tiny models' K); left/right partners paired by name as FLIP_PAIRS
FIVE = make_layout(["nose", "left_eye", "right_eye", "left_ear", "right_ear"], 0.05)


pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_cfg(**kw) -> TFPoseConfig:
    base = dict(backbone=BackboneConfig("resnet18", kwargs={"channels": [16, 32, 64, 128]}), embed_dim=32, num_heads=4,
                num_points=2, num_encoder_layers=1, num_decoder_layers=3, aux_channels=16)
    base.update(kw)
    return TFPoseConfig(**base)


def tiny_targets(B: int, K: int = 5, hw=(16, 16), seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(B):
        w = (torch.rand(K, generator=g) > 0.2).float()
        out.append({"coords": torch.rand(K, 2, generator=g), "coord_weights": w[:, None].expand(K, 2).clone(),
                    "heatmaps": torch.rand(K, *hw, generator=g), "heatmap_weights": w})
    return out


# ----------------------------------------------------------------------------------------------------------
# Structure and FLOPs (full size, meta device)
# ----------------------------------------------------------------------------------------------------------
def _meta_model(**kw) -> TFPose:
    with torch.device("meta"):
        return TFPose(TFPoseConfig(**kw), get_meta("coco")).eval()


def _transformer_params(m: TFPose) -> int:
    return sum(p.numel() for n, p in m.named_parameters() if not n.startswith(("backbone.", "aux_head.")))


def test_parameter_counts_match_the_spec_self_check():
    m = _meta_model()
    count = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    assert count(m.encoder[0]) == 732_192
    assert count(m.decoder.layers[0]) == 995_872
    assert count(m.decoder.coord_heads[0]) == 132_098
    assert round(_transformer_params(m) / 1e6, 2) == 12.09                      # R-50, N_E = 6
    assert round(count(m.aux_head) / 1e6, 2) == 3.15                            # C5 x8 deconvs, train only
    assert round(_transformer_params(_meta_model(num_encoder_layers=4)) / 1e6, 2) == 10.63
    assert round(_transformer_params(_meta_model(backbone=BackboneConfig("resnet18"))) / 1e6, 2) == 11.40
    assert 23.4e6 < count(m.backbone) < 23.6e6                                  # R-50 trunk without fc


# (config, input (h, w), the paper's GFLOPs): Tables 1-6 as the spec lists them.
PAPER_GFLOPS = [
    (dict(num_encoder_layers=4), (256, 192), 7.68),
    (dict(num_encoder_layers=6), (256, 192), 9.15),
    (dict(num_encoder_layers=6), (384, 288), 20.4),
    (dict(backbone=BackboneConfig("resnet18"), num_encoder_layers=2, num_decoder_layers=4), (256, 192), 3.61),
    (dict(backbone=BackboneConfig("resnet18"), num_encoder_layers=2, num_decoder_layers=4, q2q_attention=False), (256, 192), 3.51),
    (dict(backbone=BackboneConfig("resnet18"), num_encoder_layers=2, num_decoder_layers=4, embed_dim=128), (256, 192), 2.28),
    (dict(backbone=BackboneConfig("resnet18"), num_encoder_layers=6, num_decoder_layers=6, aux_heatmap=False), (256, 192), 6.76),
    (dict(backbone=BackboneConfig("resnet18"), num_encoder_layers=6, num_decoder_layers=6, aux_heatmap=True), (256, 192), 6.76),
] + [(dict(backbone=BackboneConfig("resnet18"), num_encoder_layers=6, num_decoder_layers=d), (256, 192), g)
     for d, g in zip(range(1, 7), (6.32, 6.41, 6.50, 6.59, 6.68, 6.77))]


def test_gmacs_match_the_papers_gflops():
    """The paper's "GFLOPs" are multiply-accumulates (spec §9). Our count: flop_counter's conv / linear / matmul
    FLOPs / 2 (what ``regpose bench`` reports as GMACs); the bilinear sampling is reported separately and
    stays within 5% too."""
    rows = []
    for kw, hw, paper in PAPER_GFLOPS:
        m = _meta_model(**kw)
        flops, _ = count_flops(m, torch.empty(1, 3, *hw, device="meta"))
        gmacs = flops / 2e9
        with_sampling = gmacs + m.extra_flops(hw)["deformable_sampling"] / 2e9
        rows.append((kw, hw, paper, gmacs, with_sampling))
    for kw, hw, paper, gmacs, with_sampling in rows:
        assert abs(gmacs / paper - 1) < 0.05, (kw, hw, paper, gmacs)
        assert abs(with_sampling / paper - 1) < 0.05, (kw, hw, paper, with_sampling)
    # Every row except the q2q-off one (a counting artefact of the paper, spec §9) is within 1.5%.
    close = [abs(g / p - 1) < 0.015 for kw, _, p, g, _ in rows if kw.get("q2q_attention", True)]
    assert all(close), rows
    # The auxiliary head costs nothing at test time (Table 4: same GFLOPs with and without it).
    aux = [g for kw, _, _, g, _ in rows if "aux_heatmap" in kw]
    assert aux[0] == aux[1]


def test_sampling_flops_formula_by_hand():
    cfg = TFPoseConfig()
    # 1008 tokens x 6 encoder layers + 17 queries x 6 decoder layers; 8 heads x 3 levels x 4 points x 4 corners
    # x 32 channels per sample; 2 FLOPs per MAC.
    assert deformable_sampling_flops(cfg, 17, (256, 192)) == 2 * (1008 * 6 + 17 * 6) * 8 * 3 * 4 * 4 * 32


# ----------------------------------------------------------------------------------------------------------
# Decoder: Eq. 4 and the ablation switches
# ----------------------------------------------------------------------------------------------------------
def _record_decoder(m: TFPose, images: torch.Tensor, train: bool = False):
    refs, deltas = [], []
    hooks = [layer.cross_attn.register_forward_pre_hook(lambda mod, args: refs.append(args[1]))
             for layer in m.decoder.layers]
    hooks += [h.register_forward_hook(lambda mod, args, out: deltas.append(out)) for h in m.decoder.coord_heads]
    try:
        memory, shapes = m.encode(images)
        outs = m.decode(memory, shapes, all_layers=True)
    finally:
        for h in hooks:
            h.remove()
    return refs, deltas, outs


@pytest.mark.parametrize("iterative", [True, False])
def test_layerwise_refinement_eq4(iterative):
    torch.manual_seed(0)
    m = TFPose(tiny_cfg(iterative_refine=iterative), FIVE).eval()
    with torch.no_grad():
        refs, deltas, outs = _record_decoder(m, torch.randn(2, 3, 64, 64))
    j0 = m.reference_logits.sigmoid().expand(2, -1, -1)
    torch.testing.assert_close(refs[0], j0)
    for d in range(len(outs)):
        prev = (outs[d - 1] if d else j0) if iterative else j0
        torch.testing.assert_close(refs[d], prev)                                 # p2q reference = J_{d-1}
        torch.testing.assert_close(outs[d], torch.sigmoid(inverse_sigmoid(prev) + deltas[d]))
    # eval forward returns the last layer's coordinates
    with torch.no_grad():
        x = torch.randn(2, 3, 64, 64)
        torch.testing.assert_close(m(x), _record_decoder(m, x)[2][-1])


def test_detach_ref_stops_gradients_between_layers():
    for detach in (False, True):
        m = TFPose(tiny_cfg(detach_ref=detach, aux_heatmap=False), FIVE).train()
        refs, _, outs = _record_decoder(m, torch.randn(2, 3, 64, 64))
        assert all(r.requires_grad != detach for r in refs[1:])
        assert refs[0].requires_grad                                             # J_0 = sigmoid(R) is learnt


@pytest.mark.parametrize("q2q", [True, False])
def test_q2q_attention_is_what_couples_the_keypoint_queries(q2q):
    """Without q2q attention each keypoint query is decoded on its own: changing query 0 leaves the others."""
    torch.manual_seed(0)
    m = TFPose(tiny_cfg(q2q_attention=q2q, aux_heatmap=False), FIVE).eval()
    assert all((layer.self_attn is not None) == q2q for layer in m.decoder.layers)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = m(x)
        m.query_embed.weight[0] += torch.randn_like(m.query_embed.weight[0])
        after = m(x)
    changed = (after - before).abs().amax(-1)[0]                                  # (K,)
    assert changed[0] > 1e-6
    if q2q:
        assert (changed[1:] > 1e-7).all()
    else:
        assert (changed[1:] == 0).all()


def test_width_and_depth_switches():
    m = TFPose(tiny_cfg(embed_dim=64, ffn_dim=0, num_encoder_layers=2, num_decoder_layers=4, levels=[2, 3, 4, 5],
                        aux_level=3), FIVE)
    assert len(m.encoder) == 2 and len(m.decoder.layers) == 4 and len(m.decoder.coord_heads) == 4
    assert m.encoder[0].ffn.linear1.out_features == 256                          # FFN = 4C
    assert m.encoder[0].self_attn.num_levels == 4 and len(m.input_proj) == 4
    assert sum(isinstance(x, torch.nn.ConvTranspose2d) for x in m.aux_head.modules()) == 1   # C3 -> x2
    m.train()
    losses = m(torch.randn(2, 3, 64, 64), tiny_targets(2))
    assert set(losses) == {f"loss_coord_{d}" for d in range(4)} | {"loss_heatmap"}


@pytest.mark.parametrize("bad", [dict(levels=[5, 3]), dict(levels=[3, 6]), dict(aux_level=2),
                                 dict(embed_dim=48), dict(num_decoder_layers=0)])
def test_invalid_config_is_rejected(bad):
    from regpose.config import ConfigError, from_dict

    with pytest.raises(ConfigError, match="model"):
        from_dict(TFPoseConfig, bad, "model")


# ----------------------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------------------
def test_losses_against_hand_computed_values():
    pred = torch.tensor([[[0.2, 0.4], [0.9, 0.1]]])
    gt = torch.tensor([[[0.3, 0.1], [0.5, 0.5]]])
    w = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    # |0.2-0.3| + |0.4-0.1| over 4 entries (mmpose L1Loss with target weights: plain mean)
    assert coordinate_l1_loss(pred, gt, w).item() == pytest.approx((0.1 + 0.3) / 4)
    hp = torch.zeros(1, 2, 2, 2)
    hp[0, 0, 0, 0], hp[0, 1, 1, 1] = 1.0, 3.0
    tg = torch.zeros(1, 2, 2, 2)
    tg[0, 0, 0, 0] = 0.5
    hw = torch.tensor([[1.0, 0.0]])
    # 0.5 * mean over 8 pixels of (w (H - H_gt))^2 = 0.5 * 0.25 / 8 (joint 1 has weight 0)
    assert joints_mse_loss(hp, tg, hw).item() == pytest.approx(0.5 * 0.25 / 8)


@pytest.mark.parametrize("deep,aux", [(True, True), (False, False)])
def test_training_losses_are_eq7(deep, aux):
    torch.manual_seed(0)
    cfg = tiny_cfg(deep_supervision=deep, aux_heatmap=aux, aux_loss_weight=7.0, coord_loss_weight=2.0)
    m = TFPose(cfg, FIVE).train()
    for mod in m.modules():                                                      # deterministic forward
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.0
    x, targets = torch.randn(2, 3, 64, 64), tiny_targets(2)
    losses = m(x, targets)
    memory, shapes = m.encode(x)
    outs = m.decode(memory, shapes, all_layers=True)
    gt = torch.stack([t["coords"] for t in targets])
    w = torch.stack([t["coord_weights"] for t in targets])
    expected = {f"loss_coord_{d}": 2.0 * ((o - gt) * w).abs().mean() for d, o in enumerate(outs)}
    if not deep:
        expected = {k: v for k, v in expected.items() if k.endswith(str(len(outs) - 1))}
    if aux:
        hm = m.aux_heatmaps(memory, shapes)
        hw = torch.stack([t["heatmap_weights"] for t in targets])[..., None, None]
        hg = torch.stack([t["heatmaps"] for t in targets])
        expected["loss_heatmap"] = 7.0 * 0.5 * ((hm - hg) * hw).pow(2).mean()
    assert set(losses) == set(expected)
    for k in expected:
        torch.testing.assert_close(losses[k], expected[k], rtol=1e-4, atol=1e-6)


def test_heatmap_target_size_mismatch_is_a_clear_error():
    m = TFPose(tiny_cfg(), FIVE).train()
    with pytest.raises(ValueError, match="heatmap targets"):
        m(torch.randn(2, 3, 64, 64), tiny_targets(2, hw=(8, 6)))


@pytest.mark.parametrize("q2q", [True, False])
def test_gradients_reach_every_parameter(q2q):
    """After one optimizer step (at initialisation some gradients are zero by design: timm zero-inits the last BN
    of every residual block, Deformable DETR the sampling-offset and attention-weight matrices, so the level
    embedding and those branches only receive gradient once those are non-zero)."""
    torch.manual_seed(0)
    m = TFPose(tiny_cfg(q2q_attention=q2q), FIVE).train()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    for _ in range(2):
        opt.zero_grad()
        losses = m(torch.randn(2, 3, 64, 64), tiny_targets(2))
        total_loss(losses).backward()
        opt.step() if not opt.state else None
    missing = [n for n, p in m.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
               or p.grad.abs().sum() == 0]
    assert not missing, missing


# ----------------------------------------------------------------------------------------------------------
# Inference graph: no auxiliary branch
# ----------------------------------------------------------------------------------------------------------
def test_aux_branch_never_runs_in_eval():
    m = TFPose(tiny_cfg(), FIVE).eval()
    calls = []
    m.aux_head.register_forward_hook(lambda *a: calls.append(1))
    out = m(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 5, 2) and not calls
    m.train()
    m(torch.randn(2, 3, 64, 64), tiny_targets(2))
    assert calls                                                                # it does run in training


def test_aux_branch_absent_from_traced_and_onnx_graphs():
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    m = TFPose(tiny_cfg(), FIVE).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        traced = torch.jit.trace(m.export_module(), (x,), check_trace=False)
    graph = str(traced.inlined_graph)
    assert "aux_head" not in graph and "conv_transpose" not in graph
    assert "decoder" in graph                                                    # the check can see module names
    transposed = [n for n in traced.inlined_graph.nodes() if n.kind() == "aten::_convolution"
                  and n.inputsAt(6).toIValue()]
    assert not transposed

    f = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(m.export_module(), (x,), f, dynamo=False, input_names=["images"],
                          output_names=["coords"], opset_version=17)
    model = onnx.load_from_string(f.getvalue())
    assert "ConvTranspose" not in {n.op_type for n in model.graph.node}
    assert not [i.name for i in model.graph.initializer if "aux" in i.name]
    out = ort.InferenceSession(f.getvalue(), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})[0]
    np.testing.assert_allclose(out, m(x).detach().numpy(), atol=1e-5)


# ----------------------------------------------------------------------------------------------------------
# Flip test and decoding
# ----------------------------------------------------------------------------------------------------------
def test_flip_back_is_an_involution_and_udp_exact():
    pairs = torch.tensor(FLIP_PAIRS)
    c = torch.rand(3, 5, 2)
    torch.testing.assert_close(flip_back_coords(flip_back_coords(c, pairs), pairs), c)
    # UDP: pixel x of a W-wide crop mirrors to (W - 1) - x; normalised by (W - 1) that is 1 - u.
    W = 48
    x_px = torch.tensor([[[5.0, 7.0], [10.0, 1.0], [30.0, 2.0], [0.0, 3.0], [47.0, 4.0]]])
    u = x_px / torch.tensor([W - 1.0, 63.0])
    mirrored = torch.stack((W - 1 - x_px[..., 0], x_px[..., 1]), -1) / torch.tensor([W - 1.0, 63.0])
    back = flip_back_coords(mirrored, pairs)
    torch.testing.assert_close(back[0, 0], u[0, 0])
    torch.testing.assert_close(back[0, 1], mirrored[0, 2] * torch.tensor([-1.0, 1.0]) + torch.tensor([1.0, 0.0]))


def test_flip_back_without_udp_mirrors_pixel_indices():
    # u = x_px / W; the mirror of pixel x is (W - 1) - x, i.e. u -> (W - 1) / W - u
    W = 48
    x_px = torch.tensor([[[5.0, 7.0], [10.0, 1.0], [30.0, 2.0], [0.0, 3.0], [47.0, 4.0]]])
    mirrored = torch.stack((W - 1 - x_px[..., 0], x_px[..., 1]), -1)
    back = flip_back_coords(mirrored / W, torch.tensor(FLIP_PAIRS), (W - 1) / W) * W
    torch.testing.assert_close(back[0, 0], x_px[0, 0])
    torch.testing.assert_close(back[0, 1], x_px[0, 2])                         # left/right swapped back
    torch.testing.assert_close(back[0, 4], x_px[0, 3])


def test_training_uses_the_grid_sample_kernel_and_eval_the_gather_kernel():
    from regpose.models.layers.deform_attn import MultiScaleDeformableAttention

    m = TFPose(tiny_cfg(), FIVE)
    attn = [x for x in m.modules() if isinstance(x, MultiScaleDeformableAttention)]
    assert attn and all(a.sampler == "grid_sample" for a in attn)              # built in training mode
    m.eval()
    assert all(a.sampler == "auto" for a in attn)
    m = TFPose(tiny_cfg(), FIVE, attention_sampler="gather").train()
    assert all(x.sampler == "gather" for x in m.modules() if isinstance(x, MultiScaleDeformableAttention))


def test_flip_test_averages_with_the_mirrored_crop():
    torch.manual_seed(0)
    m = TFPose(tiny_cfg(), FIVE).eval()
    x = torch.randn(2, 3, 64, 64)
    fused = m.predict_coords(x, flip=True)
    with torch.no_grad():
        expected = 0.5 * (m(x) + flip_back_coords(m(x.flip(3)), m.flip_pairs, 1.0))
    torch.testing.assert_close(fused, expected)
    # a mirror-symmetric input with symmetric predictions is a fixed point of the flip fusion
    sym = torch.cat([x[..., :24], x[..., :24].flip(3)], -1)
    torch.testing.assert_close(m.predict_coords(sym, flip=True),
                               0.5 * (m(sym) + flip_back_coords(m(sym), m.flip_pairs, 1.0)))


# ----------------------------------------------------------------------------------------------------------
# Learning
# ----------------------------------------------------------------------------------------------------------
def _dot_batch(B: int, K: int = 5, seed: int = 0):
    """Crops with K coloured blobs; the targets are the blob centres (normalised by (W - 1, H - 1))."""
    g = torch.Generator().manual_seed(seed)
    H, W = 64, 64
    coords = torch.rand(B, K, 2, generator=g) * 0.8 + 0.1
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    images = torch.zeros(B, 3, H, W)
    colours = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 0], [0, 1.0, 1.0]])
    for k in range(K):
        cx, cy = coords[:, k, 0] * (W - 1), coords[:, k, 1] * (H - 1)
        blob = torch.exp(-((xs - cx[:, None, None]) ** 2 + (ys - cy[:, None, None]) ** 2) / 8.0)   # (B, H, W)
        images += colours[k][None, :, None, None] * blob[:, None]
    targets = [{"coords": coords[b], "coord_weights": torch.ones(K, 2),
                "heatmaps": torch.zeros(K, H // 4, W // 4), "heatmap_weights": torch.ones(K)} for b in range(B)]
    return images, targets


def test_short_training_run_lowers_the_loss():
    torch.manual_seed(0)
    m = TFPose(tiny_cfg(aux_heatmap=False, num_decoder_layers=2), FIVE).train()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    images, targets = _dot_batch(4)
    history = []
    for _ in range(25):
        losses = m(images, targets)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert math.isfinite(history[-1])
    assert np.mean(history[-3:]) < 0.6 * np.mean(history[:3]), history
