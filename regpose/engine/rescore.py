"""Training DEKR's pose rescoring net (official ``valid.py`` with ``rescore_*.yaml`` then ``train_scorenet.py``):
predict the training images with a trained pose model, pair each detection's rescoring features with its OKS to the
ground truth, and fit :class:`~regpose.models.dekr.rescore.PredictOKSNet` to it (``regpose train-rescore``)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from ..progress import progress

from ..data.collate import Collate
from ..data.datasets import ImageDataset, load_records
from ..data.keypoints import keypoint_layout
from ..errors import DataError
from ..evaluation.oks import coco_oks
from ..models.dekr import DEKR, DEKREvalTransform, PredictOKSNet, build_dekr, rescore_features
from ..checkpoint import atomic_save, load_model_weights

__all__ = ["train_rescore"]


def _rescore_records(model: DEKR, cfg, max_images: int | None, device) -> tuple[np.ndarray, np.ndarray]:
    """Official rescore data generation: predict the training images (flip, scale 1, no rescoring) and pair each
    detection's features with its OKS to the best-matching ground truth (non-exclusive), as COCOeval's ``ious``:
    the top maxDets (20) detections by score, all of the image's ground truths. Images without ground truth are
    skipped. Official code: a target OKS of exactly 1 is replaced by 0."""
    test_cfg = dataclasses.replace(cfg.test, flip=True, scales=[1.0])
    layout = keypoint_layout(cfg.data)
    records = load_records(cfg.data.train, cfg.data.format, keypoints=layout)
    records = [r for r in records if r.num_people > 0][:max_images]
    dataset = ImageDataset(records, DEKREvalTransform(dataclasses.replace(cfg, test=test_cfg)))
    loader = DataLoader(dataset, batch_size=1, num_workers=min(cfg.train.num_workers, 4),
                        collate_fn=Collate(model.size_divisibility))
    sigmas = layout.sigmas
    feats, targets = [], []
    for batch in progress(loader, desc="rescore data", unit="img", leave=False):
        batch["images"] = batch["images"].to(device)
        res = model.predict(batch, test_cfg)[0]
        rec = records[int(batch["metas"][0]["sample_index"])]
        if len(res) == 0:
            continue
        top = np.argsort(-res.scores, kind="mergesort")[:20]
        kpts = res.keypoints[top]
        oks = coco_oks(kpts, rec.keypoints, rec.areas, sigmas, rec.boxes).max(axis=1)
        oks[oks == 1] = 0
        feats.append(rescore_features(kpts, model.keypoints))
        targets.append(oks.astype(np.float32))
    if not feats:
        raise DataError(f"train-rescore: the model found no people in {len(records)} training images")
    return np.concatenate(feats), np.concatenate(targets)


def train_rescore(cfg, weights: str, out: str, max_images: int | None = None, epochs: int = 20,
                  batch_size: int = 1024, lr: float = 1e-3) -> Path:
    """Train DEKR's rescoring net from a pose model's predictions on the training set (official
    ``valid.py`` with ``rescore_*.yaml`` then ``train_scorenet.py``): MSE to the OKS of each predicted pose, Adam lr
    1e-3, 20 epochs, batch 1024 (last partial batch dropped; smaller sets use one full batch), shuffled per epoch.
    Writes ``{"model": l1/l2/l3 state dict, ...}`` to ``out`` (use it as ``model.rescore_weights``)."""
    torch.manual_seed(cfg.train.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_dekr(cfg, keypoint_layout(cfg.data))
    load_model_weights(model, weights)
    model.rescorer = None
    model.to(device).eval()
    x, y = _rescore_records(model, cfg, max_images, device)
    # Official code: records are written once per COCO eval area range (all / medium / large), so every detection
    # appears 3 times; the CrowdPose evaluator has a single range.
    repeats = 1 if cfg.data.format == "crowdpose" else 3
    x, y = torch.from_numpy(np.repeat(x, repeats, 0)), torch.from_numpy(np.repeat(y, repeats, 0))
    net = PredictOKSNet(x.shape[1], cfg.model.rescore_hidden)
    net.reset_parameters()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    bs = min(batch_size, len(x))
    gen = torch.Generator().manual_seed(cfg.train.seed)
    losses = []
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(len(x) // bs):
            idx = perm[i * bs:(i + 1) * bs]
            loss = F.mse_loss(net(x[idx])[:, 0], y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        losses.append(total / max(len(x) // bs, 1))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_save({"model": net.state_dict(), "kind": "rescore", "num_records": int(len(x)), "epoch_losses": losses,
                 "source_weights": str(weights)}, out)
    return out
