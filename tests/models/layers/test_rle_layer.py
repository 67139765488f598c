"""RLE's flow and loss (models/layers/rle.py): the official Poseur loss case, a hand-computed loss, the flow is a
normalised density, batching predictions of one flow changes nothing, and the saturation diagnostic."""
from __future__ import annotations

import math

import numpy as np
import torch

from conftest import REFERENCE
from regpose.compat.official import load_npz_state_dict
from regpose.models.layers.rle import RealNVP, rle_loss, rle_terms, saturated_fraction

CASE = REFERENCE / "poseur" / "tiny"


def _flows():
    """The official tiny Poseur checkpoint's two flows (encoder, decoder) in float64."""
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
    with torch.no_grad():
        assert abs(float(rle_loss(mu, sigma, y, w, flow, None)) - expected) < 1e-5


def test_flow_density_integrates_to_one():
    """log_prob adds the log-determinant of every coupling: exp(log_prob) of a randomly initialised flow (and of
    Poseur's shifted prior) integrates to 1 over the plane (a wrong sign or a missing term would not)."""
    torch.manual_seed(0)
    step = 0.06
    axis = torch.arange(-9.0, 9.0, step, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    for prior_mean in ((0.0, 0.0), (0.5, 0.5)):
        flow = RealNVP(16, 4, prior_mean).double()
        for p in flow.parameters():
            torch.nn.init.normal_(p, std=0.2)      # without the log-determinant: 0.48 and 2.55
        with torch.no_grad():
            mass = float(flow.log_prob(grid).exp().sum()) * step ** 2
        assert abs(mass - 1.0) < 2e-3, (prior_mean, mass)


def test_terms_of_stacked_predictions_equal_separate_losses():
    """rle_terms on several prediction sets of one flow at once (all decoder layers) sums to the separate losses."""
    torch.manual_seed(0)
    flow = RealNVP(8, 2)
    mu, sigma = torch.rand(3, 4, 5, 2), torch.rand(3, 4, 5, 2) * 0.5 + 0.05
    target, weight = torch.rand(4, 5, 2), (torch.rand(4, 5, 1) > 0.3).float().expand(4, 5, 2)
    with torch.no_grad():
        terms = rle_terms(mu, sigma, target.expand_as(mu), weight.expand_as(mu), flow)
        for i in range(3):
            torch.testing.assert_close(terms[i].sum() / 7.0, rle_loss(mu[i], sigma[i], target, weight, flow, 7.0))


def test_loss_gradients_reach_predictions_and_flow():
    flow = RealNVP(8, 2)
    mu = torch.rand(2, 3, 2, requires_grad=True)
    sigma = (torch.rand(2, 3, 2) * 0.5 + 0.1).requires_grad_()
    rle_loss(mu, sigma, torch.rand(2, 3, 2), torch.ones(2, 3, 2), flow, 6).backward()
    assert mu.grad.abs().sum() > 0 and sigma.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in flow.parameters())


def test_saturated_fraction_counts_supervised_coordinates_only():
    sigma = torch.tensor([[[0.9995, 0.5], [0.9999, 0.9999]],
                          [[0.1, 0.1], [0.1, 0.1]]])                # (layers 2, keypoints 2, xy)
    weight = torch.tensor([[1.0, 1.0], [0.0, 0.0]])                 # the second keypoint is unlabelled
    torch.testing.assert_close(saturated_fraction(sigma, weight), torch.tensor([0.5, 0.0]))
    assert float(saturated_fraction(sigma[0], torch.zeros(2, 2))) == 0.0   # nothing supervised: 0, not nan

