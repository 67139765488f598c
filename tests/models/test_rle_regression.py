"""The RLE head, flip fusion and the RLE baseline method, Poseur's losses on the official case (the RLE loss
itself: tests/models/layers/test_rle_layer.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from regpose.models.backbones import BackboneConfig
from regpose.models.base import total_loss
from regpose.models.rle_regression import (CoarseRLEHead, NormLinear, RLEConfig, RLERegression, flip_back,
                                           fuse_flip, keypoint_scores, topdown_results, uncertainty_score)
from conftest import REFERENCE

CASE = REFERENCE / "poseur" / "tiny"


def test_norm_linear_divides_by_the_feature_norm_before_the_bias():
    layer = NormLinear(3, 2)
    x = torch.tensor([[3.0, 0.0, 4.0]])
    expected = x @ layer.linear.weight.t() / 5.0 + layer.linear.bias
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer(10 * x), expected)   # scale invariant


def test_coarse_head_shapes_and_sigma_range():
    head = CoarseRLEHead(16, 5)
    mu, sigma = head(torch.randn(3, 16, 4, 3))
    assert mu.shape == sigma.shape == (3, 5, 2)
    assert ((sigma > 0) & (sigma < 1)).all()


def test_flip_back_twice_is_identity_and_swaps_pairs():
    pairs = torch.tensor([[1, 2], [3, 4]])
    mu, sigma = torch.rand(2, 5, 2), torch.rand(2, 5, 2)
    m1, s1 = flip_back(mu, sigma, pairs)
    assert torch.allclose(m1[:, 1, 0], 1 - mu[:, 2, 0]) and torch.equal(s1[:, 3], sigma[:, 4])
    m2, s2 = flip_back(m1, s1, pairs)
    torch.testing.assert_close(m2, mu)
    torch.testing.assert_close(s2, sigma)


def test_fusion_modes_hand_computed():
    mu1, mu2 = torch.tensor([[[0.2, 0.4]]]), torch.tensor([[[0.4, 0.8]]])
    s1, s2 = torch.tensor([[[0.1, 0.3]]]), torch.tensor([[[0.5, 0.5]]])
    k1, k2 = 1 - 0.2, 1 - 0.5                              # mean(1 - sigma)
    mu, score = fuse_flip(mu1, s1, mu2, s2, "default")
    torch.testing.assert_close(mu, (mu1 + mu2) / 2)
    assert abs(float(score) - (k1 + k2) / 2) < 1e-6
    mu, score = fuse_flip(mu1, s1, mu2, s2, "type1")
    torch.testing.assert_close(mu, (mu1 * k1 + mu2 * k2) / (k1 + k2))
    assert abs(float(score) - (k1 * k2 * (1 - abs(k1 - k2))) ** 2) < 1e-6
    p = [0.7 * (1 - math.exp(-0.2 / 0.1)) * (1 - math.exp(-0.2 / 0.3)), 0.7 * (1 - math.exp(-0.2 / 0.5)) ** 2]
    mu, score = fuse_flip(mu1, s1, mu2, s2, "type2")
    w1, w2 = p[0] ** 5, p[1] ** 5
    torch.testing.assert_close(mu, (mu1 * w1 + mu2 * w2) / (w1 + w2), rtol=1e-6, atol=1e-7)
    assert abs(float(score) - sum(p) / 2) < 1e-6
    assert abs(float(uncertainty_score(s1)) - p[0]) < 1e-6
    _, none = fuse_flip(mu1, s1, mu2, s2, "type2", kind="none")
    assert float(none) == 1.0
    assert float(keypoint_scores(s1, "none")) == 1.0


def test_topdown_results_map_back_through_the_inverse_affine():
    mu = torch.tensor([[[0.5, 0.5], [0.0, 1.0]]])
    inverse = np.array([[2.0, 0.0, 10.0], [0.0, 2.0, 20.0]])   # crop px -> image px
    metas = [{"inverse": inverse, "box": [1, 2, 3, 4], "box_score": 0.5, "scale": [1.0, 2.0]}]
    res = topdown_results(mu, torch.tensor([[0.3, 0.6]]), metas, (256, 192))[0]
    np.testing.assert_allclose(res.keypoints[0, :, :2], [[2 * 96 + 10, 2 * 128 + 20], [10, 2 * 256 + 20]])
    np.testing.assert_allclose(res.extras["area"], [200.0 * 400.0])
    # meta["box"] is in network-input coordinates (continuous, COCO convention) and maps back the same way
    np.testing.assert_allclose(res.boxes[0], [11.5, 23.5, 15.5, 27.5])
    assert float(res.extras["box_score"][0]) == 0.5 and abs(float(res.scores[0]) - 0.45) < 1e-6


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


def test_poseur_losses_equal_official_case():
    """Poseur's loss wiring (coarse + per-layer RLE, both flows, group-counting divisors) on the official case."""
    from regpose.compat.poseur import build_reference_model

    model, _ = build_reference_model(CASE)
    case = np.load(CASE / "rle_loss_case.npz")
    t = {k: torch.from_numpy(case[k]) for k in case.files}
    out = {"coarse_mu": t["enc_mu"], "coarse_sigma": t["enc_sigma"], "mu": list(t["dec_mu"]),
           "sigma": list(t["dec_sigma"])}
    with torch.no_grad():
        losses = model.losses(out, t["target"], t["target_weight"], groups=4)
    assert abs(losses["loss_coarse"].item() - float(case["loss_enc"])) <= 1e-5 * max(1.0, float(case["loss_enc"]))
    for i in range(2):
        assert abs(losses[f"loss_dec{i}"].item() - float(case["loss_dec"][i])) <= 1e-5 * float(case["loss_dec"][i])
    assert abs(total_loss(losses).item() - float(case["loss_total"])) <= 1e-5 * float(case["loss_total"])


@pytest.mark.parametrize("kwargs", [{}, {"stem_width": 16, "channels": [16, 32, 64, 128]}])
def test_backbone_loads_local_pretrained_weights(tmp_path, kwargs):
    from regpose.models.backbones import build_backbone

    src = build_backbone(BackboneConfig("resnet18", kwargs=kwargs), (1, 2, 3, 4))
    for p in src.parameters():
        torch.nn.init.normal_(p)
    path = tmp_path / "r18.pth"
    torch.save(src.body.state_dict(), path)
    dst = build_backbone(BackboneConfig("resnet18", weights=str(path), kwargs=kwargs), (1, 2, 3, 4))
    assert dst.load_initial_weights().coverage == 1.0
    for (n, a), (_, b) in zip(src.body.state_dict().items(), dst.body.state_dict().items()):
        assert torch.equal(a, b), n