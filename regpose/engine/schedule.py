"""Optimiser with name-pattern parameter groups, and learning-rate schedules by iteration."""
from __future__ import annotations

import math
import re

import torch
from torch import nn

from ..config import ConfigError, TrainConfig

__all__ = ["build_optimizer", "lr_factor", "set_lr"]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Group trainable parameters by the first matching ``cfg.lr_rules`` pattern (lr / decay multipliers)."""
    rules = [(re.compile(r.pattern), r) for r in cfg.lr_rules]
    groups: dict[tuple[float, float], list] = {}
    names: dict[tuple[float, float], list[str]] = {}
    used = [False] * len(rules)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        mult, dmult = 1.0, 1.0
        for i, (rx, r) in enumerate(rules):
            if rx.search(name):
                mult, dmult, used[i] = r.lr_mult, r.decay_mult, True
                break
        groups.setdefault((mult, dmult), []).append(p)
        names.setdefault((mult, dmult), []).append(name)
    for (rx, r), u in zip(rules, used):
        if not u:
            raise ConfigError(f"train.lr_rules: pattern {r.pattern!r} matches no trainable parameter")
    param_groups = [{"params": ps, "lr": cfg.lr * m, "base_lr": cfg.lr * m, "weight_decay": cfg.weight_decay * d,
                     "lr_mult": m, "names": names[(m, d)]} for (m, d), ps in groups.items()]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(param_groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        # Official DEKR passes no weight decay to Adam; a non-zero value here is honoured (L2, as torch does).
        return torch.optim.Adam(param_groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    return torch.optim.SGD(param_groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def lr_factor(it: int, cfg: TrainConfig, total_iters: int, steps: list[int]) -> float:
    """Multiplier of the base lr at iteration ``it`` (0-based): linear warm-up, then step / cosine / constant."""
    if cfg.schedule == "step":
        f = cfg.gamma ** sum(it >= s for s in steps)
    elif cfg.schedule == "cosine":
        t = min(max(it - cfg.warmup_iters, 0) / max(total_iters - cfg.warmup_iters, 1), 1.0)
        f = cfg.min_lr_factor + (1 - cfg.min_lr_factor) * 0.5 * (1 + math.cos(math.pi * t))
    else:
        f = 1.0
    if it < cfg.warmup_iters:
        alpha = it / cfg.warmup_iters
        f *= cfg.warmup_factor * (1 - alpha) + alpha
    return f


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = g["base_lr"] * factor
