"""The RLE baseline: its loss against the official Poseur loss case and by hand, and a short training run."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from regpose.models.backbones import BackboneConfig
from regpose.models.base import total_loss
from regpose.models.layers.rle import RealNVP, rle_loss
from regpose.models.rle import RLEConfig, RLERegression
from conftest import REFERENCE

CASE = REFERENCE / "poseur" / "tiny"


def _flows():
    from regpose.compat.official import load_npz_state_dict

    sd = load_npz_state_dict(CASE / "weights.npz")
    flows = []
    for prefix in ("keypoint_head.enc_flow.", "keypoint_head.dec_flow."):
        flow = RealNVP(64, 6, (0.5, 0.5)).double()
        flow.load_state_dict({k[len(prefix):]: v.double() for k, v in sd.items() if k.startswith(prefix)})
        flows.append(flow)
    return flows


def test_rle_loss_equals_official_case():
    case = np.load(CASE / "rle_loss_case.npz")
    t = {k: torch.from_numpy(case[k]).double() for k in case.files}
    enc_flow, dec_flow = _flows()
    B, K = t["target"].shape[:2]
    torch.testing.assert_close(enc_flow.log_prob((t["enc_mu"] - t["target"]) / t["enc_sigma"]).unsqueeze(-1),
                               t["enc_log_phi"], rtol=0, atol=1e-5)
    with torch.no_grad():
        loss_enc = rle_loss(t["enc_mu"], t["enc_sigma"], t["target"], t["target_weight"], enc_flow, B * K)
    tg, wg = t["target"].repeat(1, 4, 1), t["target_weight"].repeat(1, 4, 1)
    with torch.no_grad():
        loss_dec = [rle_loss(t["dec_mu"][i], t["dec_sigma"][i], tg, wg, dec_flow, B * K * 4) for i in range(2)]
    assert abs(loss_enc.item() - float(t["loss_enc"])) < 1e-5 * max(1.0, abs(float(t["loss_enc"])))
    for ours, theirs in zip(loss_dec, t["loss_dec"]):
        assert abs(float(ours) - float(theirs)) <= 1e-5 * abs(float(theirs))
    total = loss_enc + sum(loss_dec)
    assert abs(float(total) - float(t["loss_total"])) <= 1e-5 * abs(float(t["loss_total"]))
    # all weights 0 -> the plain sum, which is 0
    with torch.no_grad():
        zero = rle_loss(t["enc_mu"], t["enc_sigma"], t["target"], torch.zeros_like(t["target_weight"]), enc_flow, None)
    assert float(zero) == float(t["loss_enc_all_invisible"]) == 0.0


def test_rle_loss_hand_computed_with_identity_flow():
    """A flow whose couplings output zero is the prior itself: log phi = -log(2 pi) - |bar - m|^2 / 2."""
    flow = RealNVP(8, 2, (0.0, 0.0))
    for p in flow.parameters():
        torch.nn.init.zeros_(p)
    mu, sigma = torch.tensor([[0.3, 0.6]]), torch.tensor([[0.2, 0.5]])
    y, w = torch.tensor([[0.5, 0.4]]), torch.tensor([[1.0, 1.0]])
    bar = (mu - y) / sigma
    log_phi = -math.log(2 * math.pi) - 0.5 * float((bar ** 2).sum())
    expected = 0.0
    for d in range(2):
        s = float(sigma[0, d])
        expected += (math.log(s) - log_phi) + math.log(s * math.sqrt(2 * math.pi)) + abs(float(y[0, d] - mu[0, d])) / (math.sqrt(2) * s + 1e-9)
    assert abs(float(rle_loss(mu, sigma, y, w, flow, None)) - expected) < 1e-5


def _tiny_rle_cfg(**kw):
    return RLEConfig(backbone=BackboneConfig("resnet18", kwargs={"stem_width": 16, "channels": [16, 32, 64, 128]}), **kw)


def test_rle_method_trains_and_predicts():
    torch.manual_seed(0)
    model = RLERegression(_tiny_rle_cfg(), [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10], [11, 12], [13, 14], [15, 16]],
                          np.full(17, 0.05))
    images = torch.randn(4, 3, 64, 48)
    targets = [{"coords": torch.rand(17, 2) * 0.6 + 0.2, "coord_weights": torch.ones(17, 2)} for _ in range(4)]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    losses = []
    for it in range(25):
        loss = model(images, targets)["loss_rle"]
        opt.zero_grad()
        loss.backward()
        if it == 1:   # after one step: timm zero-inits each block's last BN gamma, which blocks gradients at step 0
            missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
            assert not missing, missing
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0] - 1.0, losses
    model.eval()
    metas = [{"inverse": np.array([[1.0, 0, 0], [0, 1.0, 0]]), "box": [0, 0, 47, 63], "box_score": 1.0,
              "scale": [0.3, 0.4]} for _ in range(4)]
    res = model.predict({"images": images, "metas": metas}, type("T", (), {"flip": True})())
    assert len(res) == 4 and res[0].keypoints.shape == (1, 17, 3)
