"""ModelEMA (regpose/engine/ema.py): the average computed by hand with its warm-up of the decay,
d_t = decay * (1 - exp(-t / warmup)); integer buffers copied; a resumed EMA continues exactly."""
from __future__ import annotations

import math

import torch
from torch import nn

from regpose.engine.ema import ModelEMA


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1))


def _set(model: nn.Module, value: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)
        model[1].running_mean.fill_(value)
        model[1].num_batches_tracked.fill_(int(10 * value))


def test_average_by_hand_with_the_warm_up():
    model = _model()
    _set(model, 1.0)
    ema = ModelEMA(model, decay=0.9, warmup=2)
    expected = 1.0
    for t, value in enumerate([3.0, -1.0, 5.0], start=1):
        _set(model, value)
        ema.update(model)
        d = 0.9 * (1 - math.exp(-t / 2))                  # 0.354, 0.569, 0.699: early updates follow the model
        expected = d * expected + (1 - d) * value
        state = ema.module.state_dict()
        for name in ("0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean"):
            torch.testing.assert_close(state[name], torch.full_like(state[name], expected), rtol=0, atol=1e-6)
        assert int(state["1.num_batches_tracked"]) == int(10 * value)      # integers are copied, not averaged
    assert ema.updates == 3
    assert all(bool((p == 5.0).all()) for p in model.parameters())                  # the model is untouched


def test_no_warm_up_is_the_plain_decay_and_the_copy_is_frozen():
    model = _model()
    _set(model, 0.0)
    ema = ModelEMA(model, decay=0.75, warmup=0)
    _set(model, 4.0)
    ema.update(model)
    torch.testing.assert_close(ema.module[0].weight, torch.full((1, 2), 1.0))      # 0.75 * 0 + 0.25 * 4
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())
    assert ema.module[0].weight.data_ptr() != model[0].weight.data_ptr()


def test_state_dict_round_trip_resumes_the_same_average():
    model = _model()
    ema = ModelEMA(model, decay=0.99, warmup=5)
    for v in (1.0, 2.0):
        _set(model, v)
        ema.update(model)
    resumed = ModelEMA(_model(), decay=0.99, warmup=5)
    resumed.load_state_dict(ema.state_dict())
    assert resumed.updates == 2
    for e in (ema, resumed):
        _set(model, 3.0)
        e.update(model)
    for a, b in zip(ema.module.state_dict().values(), resumed.module.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
