"""Fit a training schedule to a wall-clock budget: time a few real training steps on this machine, then set the
iterations (and with them warm-up, LR steps and the EMA warm-up) so the *schedule* ends when the budget does.
``train.max_minutes`` alone only cuts the loop short, leaving the learning rate undecayed; ``regpose demo`` and the
learning benchmarks use this instead."""
from __future__ import annotations

import time

import torch

from ..data.collate import Collate
from ..data.datasets import build_dataset, ensure_synthetic
from ..data.keypoints import keypoint_layout
from ..errors import ConfigError
from ..models import build_model
from ..models.base import total_loss
from ..models.registry import get_method

__all__ = ["seconds_per_iteration", "fit_schedule_to_budget", "set_schedule_length"]


def seconds_per_iteration(cfg, steps: int = 6, warmup: int = 2, statistic: str = "median") -> float:
    """Seconds of one training iteration of ``cfg`` (data loading + transform + forward + backward + step, batch
    ``cfg.train.batch_size``): the median (or with ``statistic="min"`` the fastest — other jobs on a machine only
    ever slow a step down) of ``steps`` after ``warmup`` untimed ones; generates the synthetic data if needed."""
    if statistic not in ("median", "min"):
        raise ValueError(f"statistic: expected 'median' or 'min', got {statistic!r}")

    for split in (cfg.data.train, cfg.data.val):
        if split.synthetic.num_images > 0:
            ensure_synthetic(split, cfg.data.format, keypoint_layout(cfg.data))
    spec = get_method(cfg.method)
    ds = build_dataset(cfg, "train", spec.transform(cfg, True), spec.family)
    model = build_model(cfg).train()
    loader = torch.utils.data.DataLoader(ds, batch_size=cfg.train.batch_size, shuffle=True, num_workers=0,
                                         collate_fn=Collate(model.size_divisibility),
                                         generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    batches = iter(loader)
    for i in range(steps + warmup):
        t0 = time.perf_counter()
        batch = next(batches)
        losses = model(batch["images"], batch["targets"])
        opt.zero_grad(set_to_none=True)
        total_loss(losses).backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return min(times) if statistic == "min" else sorted(times)[len(times) // 2]


def fit_schedule_to_budget(cfg, minutes: float, sec_per_iter: float, fraction: float = 0.92,
                           min_iters: int = 20) -> int:
    """Set ``cfg.train`` so ``fraction`` of ``minutes`` holds the whole schedule at ``sec_per_iter`` (see
    :func:`set_schedule_length`), with ``max_minutes`` as the hard stop. Returns the iteration count."""
    iters = max(min_iters, int(fraction * minutes * 60 / sec_per_iter))
    set_schedule_length(cfg, iters)
    cfg.train.max_minutes = minutes
    return iters


def set_schedule_length(cfg, iters: int) -> None:
    """Stretch or shrink ``cfg.train``'s schedule to ``iters`` iterations: step milestones scale with it, warm-up
    stays at most a tenth and the EMA warm-up at most a fifth of the run, the log period at most a twentieth."""
    tc = cfg.train
    if tc.epochs > 0:
        raise ConfigError(f"train.epochs={tc.epochs}: fitting a schedule to a time budget needs an iteration-based "
                          f"schedule (train.epochs=0 with train.iters / train.steps)")
    scale = iters / max(1, tc.iters)
    tc.steps = [max(1, int(s * scale)) for s in tc.steps]
    tc.iters = iters
    tc.warmup_iters = min(tc.warmup_iters, iters // 10)
    if tc.ema.enabled:
        tc.ema.warmup = min(tc.ema.warmup, iters // 5)
    tc.log_period = max(1, min(tc.log_period, iters // 20))
