"""Multi-scale deformable attention: both samplers against an independent per-head reference (mmcv's
grid_sample formulation), EMSDA == MSDA with a block-diagonal bias-free value projection, gradients, export."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from regpose.models.layers.deform_attn import (MultiScaleDeformableAttention, deformable_sample_gather,
                                               deformable_sample_grid, level_start_index)

SHAPES = [(8, 6), (4, 3), (2, 2)]


def _reference_sample(value, shapes, locations, weights):
    """mmcv's multi_scale_deformable_attn_pytorch written per head (value (B, N, M, D))."""
    B, N, M, D = value.shape
    _, Q, _, L, P, _ = locations.shape
    out = torch.zeros(B, Q, M, D, dtype=value.dtype)
    for m in range(M):
        for lvl, (start, (h, w)) in enumerate(zip(level_start_index(shapes), shapes)):
            v = value[:, start:start + h * w, m].transpose(1, 2).reshape(B, D, h, w)
            g = 2 * locations[:, :, m, lvl] - 1                                  # (B, Q, P, 2)
            s = F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)  # (B, D, Q, P)
            out[:, :, m] += (s * weights[:, None, :, m, lvl]).sum(-1).transpose(1, 2)
    return out


def _random_case(B=2, Q=5, M=4, L=3, P=2, D=3, G=None, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    N = sum(h * w for h, w in SHAPES)
    G = M if G is None else G
    value = torch.randn(B, N, G, D, generator=g, dtype=dtype)
    # Locations spread beyond [0, 1] so zero padding and the far-outside clamp are exercised.
    locations = torch.rand(B, Q, M, L, P, 2, generator=g, dtype=dtype) * 1.6 - 0.3
    weights = torch.rand(B, Q, M, L, P, generator=g, dtype=dtype)
    return value, locations, weights


@pytest.mark.parametrize("sampler", [deformable_sample_gather, deformable_sample_grid])
@pytest.mark.parametrize("shared", [False, True])
def test_samplers_match_per_head_reference(sampler, shared):
    value, loc, w = _random_case(G=1 if shared else None)
    ref_value = value.expand(-1, -1, 4, -1) if shared else value
    expected = _reference_sample(ref_value, SHAPES, loc, w)
    assert (loc < 0).any() and (loc > 1).any()
    torch.testing.assert_close(sampler(value, SHAPES, loc, w), expected, rtol=0, atol=1e-12)


def test_gather_far_outside_is_zero_and_pixel_centres_are_exact():
    value = torch.arange(48, dtype=torch.float64).view(1, 48, 1, 1)
    shapes = [(8, 6)]
    # pixel (x=2, y=3) centre -> normalised ((2 + .5) / 6, (3 + .5) / 8); one far-away sample.
    loc = torch.tensor([[2.5 / 6, 3.5 / 8], [1e6, -1e6]], dtype=torch.float64).view(1, 2, 1, 1, 1, 2)
    w = torch.ones(1, 2, 1, 1, 1, dtype=torch.float64)
    out = deformable_sample_gather(value, shapes, loc, w).view(2)
    assert out.tolist() == [3 * 6 + 2, 0.0]


def test_gradients_match_between_samplers():
    value, loc, w = _random_case()
    grads = []
    for sampler in (deformable_sample_gather, deformable_sample_grid):
        v, l, ww = (t.clone().requires_grad_() for t in (value, loc, w))
        (sampler(v, SHAPES, l, ww) ** 2).sum().backward()
        grads.append((v.grad, l.grad, ww.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_gather_gradcheck():
    value, loc, w = _random_case(B=1, Q=2, M=2, L=3, P=1, D=2)
    loc = loc.clamp(0.05, 0.95)   # keep away from the non-differentiable pixel grid lines' far outside
    assert torch.autograd.gradcheck(lambda v, l, ww: deformable_sample_gather(v, SHAPES, l, ww),
                                    (value.requires_grad_(), loc.requires_grad_(), w.requires_grad_()))


@pytest.mark.parametrize("mode", ["msda", "emsda"])
def test_module_shapes_and_gradients(mode):
    attn = MultiScaleDeformableAttention(16, num_heads=4, num_levels=3, num_points=2, mode=mode)
    for p in attn.parameters():                     # non-degenerate weights so every gradient is non-zero
        torch.nn.init.normal_(p, std=0.3)
    N = sum(h * w for h, w in SHAPES)
    q, v = torch.randn(2, 7, 16), torch.randn(2, N, 16)
    ref = torch.rand(2, 7, 2)
    out = attn(q, ref, v, SHAPES, query_pos=torch.randn(2, 7, 16))
    assert out.shape == (2, 7, 16)
    out.square().sum().backward()
    for name, p in attn.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # per-level reference points (TFPose / Deformable DETR encoder) give the same as a shared one
    out2 = attn(q, ref[:, :, None].expand(-1, -1, 3, -1), v, SHAPES)
    out1 = attn(q, ref, v, SHAPES)
    torch.testing.assert_close(out1, out2)


def test_emsda_equals_msda_with_blockwise_projection_inside_the_map():
    """EMSDA projects after sampling; with every sample inside the map that equals MSDA whose value projection
    holds W_i^v in head i's output columns (paper Eq. 1 vs Deformable DETR Eq. 3; bilinear sampling is linear)."""
    C, M = 16, 4
    e = MultiScaleDeformableAttention(C, M, 3, 2, mode="emsda").double()
    m = MultiScaleDeformableAttention(C, M, 3, 2, mode="msda").double()
    for p in e.parameters():
        torch.nn.init.normal_(p, std=0.2)
    with torch.no_grad():
        for name in ("sampling_offsets", "attention_weights", "output_proj"):
            getattr(m, name).load_state_dict(getattr(e, name).state_dict())
        e.sampling_offsets.weight.mul_(0.01)       # keep samples inside the maps
        e.sampling_offsets.bias.zero_()
        m.sampling_offsets.load_state_dict(e.sampling_offsets.state_dict())
        m.value_proj.weight.copy_(torch.cat(e.value_proj_weight.unbind(0), dim=1).t())
        m.value_proj.bias.copy_(e.value_proj_bias.reshape(-1))
    N = sum(h * w for h, w in SHAPES)
    q, v = torch.randn(2, 5, C, dtype=torch.float64), torch.randn(2, N, C, dtype=torch.float64)
    ref = torch.rand(2, 5, 2, dtype=torch.float64) * 0.5 + 0.25
    torch.testing.assert_close(e(q, ref, v, SHAPES), m(q, ref, v, SHAPES))


def test_samplers_agree_inside_module():
    attn = MultiScaleDeformableAttention(16, 4, 3, 2, mode="emsda")
    torch.nn.init.normal_(attn.sampling_offsets.weight, std=1.0)
    N = sum(h * w for h, w in SHAPES)
    q, v, ref = torch.randn(2, 7, 16), torch.randn(2, N, 16), torch.rand(2, 7, 2)
    attn.sampler = "gather"
    a = attn(q, ref, v, SHAPES)
    attn.sampler = "grid_sample"
    b = attn(q, ref, v, SHAPES)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["msda", "emsda"])
def test_onnx_export_uses_grid_sample_and_matches(tmp_path, mode):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = MultiScaleDeformableAttention(16, 4, 3, 2, mode=mode)
            torch.nn.init.normal_(self.attn.sampling_offsets.weight, std=1.0)

        def forward(self, q, ref, v):
            return self.attn(q, ref, v, SHAPES)

    model = Wrap().eval()
    N = sum(h * w for h, w in SHAPES)
    args = (torch.randn(2, 7, 16), torch.rand(2, 7, 2), torch.randn(2, N, 16))
    path = tmp_path / "attn.onnx"
    torch.onnx.export(model, args, str(path), dynamo=False, opset_version=17)
    import onnx
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "GridSample" in ops and "Loop" not in ops
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {i.name: a.numpy() for i, a in zip(sess.get_inputs(), args)})[0]
    torch.testing.assert_close(torch.from_numpy(got), model(*args), rtol=1e-4, atol=1e-4)
