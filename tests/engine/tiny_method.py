"""A tiny registered method and in-memory dataset for engine tests (no data layer, fast on CPU).

The dataset draws augmentation noise from ``numpy.random`` so the engine's per-sample seeding is exercised;
the model has optional dropout so resuming must restore the training process's torch RNG exactly."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from regpose.models.base import PoseModel
from regpose.models.registry import MethodSpec, register_method
from regpose.structures import PoseResult


@dataclass
class TinyConfig:
    width: int = 8
    dropout: float = 0.0
    batch_norm: bool = False
    nan_after: int = -1      # forward calls after which the loss becomes NaN (tests the NaN guard)
    sleep_ms: float = 0.0    # slow each training step down (lets a test kill a run mid-way)
    pad_mb: float = 0.0      # a constant buffer making checkpoints this large (lets a test kill a run mid-write)


class TinyNet(PoseModel):
    num_keypoints = 1

    def __init__(self, width: int = 8, dropout: float = 0.0, batch_norm: bool = False, nan_after: int = -1):
        super().__init__()
        self.nan_after, self.calls, self.sleep_ms = nan_after, 0, 0.0
        norm = (lambda c: nn.BatchNorm2d(c)) if batch_norm else (lambda c: nn.Identity())
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), norm(width), nn.ReLU(),
                                  nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout))
        self.head = nn.Linear(width, 2)

    def forward(self, images, targets=None):
        xy = self.head(self.body(images))
        if targets is None:
            return {"xy": xy}
        gt = torch.stack([t["xy"] for t in targets])
        self.calls += 1
        if self.sleep_ms:
            time.sleep(self.sleep_ms / 1000)
        loss = ((xy - gt) ** 2).mean()
        if 0 <= self.nan_after < self.calls:
            loss = loss * float("nan")
        return {"loss_xy": loss, "mae": (xy - gt).abs().mean().detach()}

    @torch.no_grad()
    def predict(self, batch, test_cfg):
        xy = self.forward(batch["images"])["xy"].cpu().numpy() * 32
        return [PoseResult(np.array([[p[0] - 4, p[1] - 4, p[0] + 4, p[1] + 4]]), np.array([[[p[0], p[1], 1.0]]]),
                           np.array([1.0])) for p in xy]


class TinyDataset(Dataset):
    """Blob images; targets are the blob centre in [0, 1]. Noise comes from the global numpy RNG."""

    def __init__(self, n: int = 64, size: int = 32):
        rng = np.random.default_rng(123)
        self.centres = rng.uniform(0.2, 0.8, size=(n, 2)).astype(np.float32)
        self.size = size
        yy, xx = np.mgrid[0:size, 0:size]
        self.grid = np.stack([xx, yy], -1).astype(np.float32) / size

    def __len__(self):
        return len(self.centres)

    def __getitem__(self, i):
        c = self.centres[i] + np.random.uniform(-0.05, 0.05, 2).astype(np.float32)   # augmentation jitter
        blob = np.exp(-((self.grid - c) ** 2).sum(-1) / 0.01)
        img = np.repeat(blob[None], 3, 0) + np.random.normal(0, 0.05, (3, self.size, self.size))
        return {"image": torch.from_numpy(img.astype(np.float32)), "target": {"xy": torch.from_numpy(c)},
                "meta": {"image_id": i, "sample_index": i}}


def _build(cfg) -> TinyNet:
    net = TinyNet(cfg.model.width, cfg.model.dropout, cfg.model.batch_norm, cfg.model.nan_after)
    net.sleep_ms = cfg.model.sleep_ms
    if cfg.model.pad_mb > 0:
        net.register_buffer("pad", torch.zeros(int(cfg.model.pad_mb * 2**18)))
    return net


def tiny_transform(cfg, train):
    return lambda sample: sample


register_method(MethodSpec(name="tiny", config_cls=TinyConfig,
                           build=lambda cfg, keypoints: _build(cfg),
                           family="onestage", transform=tiny_transform))


def tiny_config(out_dir: str, **train) -> "regpose.config.Config":  # noqa: F821
    from regpose.config import load_config

    raw = {"method": "tiny", "output_dir": str(out_dir),
           "train": {"batch_size": 4, "iters": 8, "lr": 0.01, "optimizer": "adamw", "num_workers": 0,
                     "log_period": 2, "seed": 3, **train}}
    return load_config(raw)
