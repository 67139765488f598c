"""The RLE baseline method: a short training run and prediction (the RLE loss itself, against the official Poseur
case and by hand: tests/models/layers/test_rle_layer.py)."""
from __future__ import annotations

import numpy as np
import torch

from regpose.models.backbones import BackboneConfig
from regpose.models.base import total_loss
from regpose.data.keypoints import get_meta
from regpose.models.rle import RLEConfig, RLERegression


def _tiny_rle_cfg(**kw):
    return RLEConfig(backbone=BackboneConfig("resnet18", kwargs={"stem_width": 16, "channels": [16, 32, 64, 128]}), **kw)


def test_rle_method_trains_and_predicts():
    torch.manual_seed(0)
    model = RLERegression(_tiny_rle_cfg(), get_meta("coco"))
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
