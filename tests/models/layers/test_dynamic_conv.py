"""Sparse R-CNN's dynamic instance interaction (models/layers/dynamic_conv.py): shapes, the per-instance MLP written
out by hand, gradients to every parameter, and the fast inference path changes nothing but speed."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from regpose.models.layers.dynamic_conv import DynamicConv, eager_cpu_inference, fast_linear


def _module(dim=8, dim_dynamic=4, tokens=9, seed=0) -> DynamicConv:
    torch.manual_seed(seed)
    m = DynamicConv(dim, dim_dynamic, tokens)
    for norm in (m.norm1, m.norm2, m.norm3):          # non-trivial affine LayerNorms
        nn.init.normal_(norm.weight, 1.0, 0.2)
        nn.init.normal_(norm.bias, 0.0, 0.2)
    return m


def test_each_query_mixes_its_own_tokens_with_its_generated_weights():
    """Per instance: W1 = the first d*dd generated parameters as (d, dd), W2 = the rest as (dd, d); tokens @ W1 ->
    LN -> ReLU -> @ W2 -> LN -> ReLU, flattened token-major -> out_layer -> LN -> ReLU (QueryPose Eq. 1)."""
    m = _module()
    d, dd, t = 8, 4, 9
    query, tokens = torch.randn(3, d), torch.randn(3, t, d)
    out = m(query, tokens)
    assert out.shape == (3, d)
    for i in range(3):
        params = m.dynamic_layer(query[i])
        w1, w2 = params[:d * dd].view(d, dd), params[d * dd:].view(dd, d)
        x = F.relu(F.layer_norm(tokens[i] @ w1, (dd,), m.norm1.weight, m.norm1.bias))
        x = F.relu(F.layer_norm(x @ w2, (d,), m.norm2.weight, m.norm2.bias))
        y = F.relu(F.layer_norm(m.out_layer(x.flatten()), (d,), m.norm3.weight, m.norm3.bias))
        torch.testing.assert_close(out[i], y)
    # instances are independent: changing one query's tokens leaves the others alone
    tokens2 = tokens.clone()
    tokens2[0] += 1.0
    out2 = m(query, tokens2)
    torch.testing.assert_close(out2[1:], out[1:])
    assert not torch.allclose(out2[0], out[0])


def test_gradients_reach_every_parameter_and_both_inputs():
    m = _module()
    query, tokens = torch.randn(4, 8, requires_grad=True), torch.randn(4, 9, 8, requires_grad=True)
    m(query, tokens).square().sum().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    assert query.grad.abs().sum() > 0 and tokens.grad.abs().sum() > 0


def test_fast_inference_path_equals_the_plain_layers():
    """eager_cpu_inference is only true without autograd / tracing; fast_linear (oneDNN) then gives nn.Linear's
    result up to rounding, so the module's output does not depend on the path."""
    m = _module()
    layer = nn.Linear(8, 16)
    x = torch.randn(5, 8)
    assert not eager_cpu_inference(x)                      # grad mode on
    with torch.no_grad():
        assert eager_cpu_inference(x)
        torch.testing.assert_close(fast_linear(x, layer), layer(x), rtol=1e-5, atol=1e-5)
        query, tokens = torch.randn(3, 8), torch.randn(3, 9, 8)
        fast = m(query, tokens)
    torch.testing.assert_close(fast, m(query, tokens).detach(), rtol=1e-5, atol=1e-5)
