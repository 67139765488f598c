"""Optimiser with name-pattern parameter groups, and learning-rate schedules by iteration."""
from __future__ import annotations

import math
import re

import torch
from torch import nn

from ..config import ConfigError, TrainConfig

__all__ = ["parameter_groups", "build_optimizer", "lr_factor", "set_lr"]


def parameter_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """Trainable parameters grouped by the first ``cfg.lr_rules`` pattern their name matches (``rule``: that
    pattern, ``None`` for the parameters no rule matches), with the group's lr, weight decay and names."""
    rules = [(re.compile(r.pattern), r) for r in cfg.lr_rules]
    members: dict[int, list[tuple[str, nn.Parameter]]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        index = next((i for i, (rx, _) in enumerate(rules) if rx.search(name)), len(rules))
        members.setdefault(index, []).append((name, p))
    for i, (_, r) in enumerate(rules):
        if i not in members and not r.optional:
            raise ConfigError(f"train.lr_rules: pattern {r.pattern!r} matches no trainable parameter "
                              f"(mark it 'optional: true' if only some variants of the model have it)")
    groups = []
    for index in sorted(members):
        rule = rules[index][1] if index < len(rules) else None
        mult, dmult = (rule.lr_mult, rule.decay_mult) if rule else (1.0, 1.0)
        groups.append({"params": [p for _, p in members[index]], "names": [n for n, _ in members[index]],
                       "rule": rule.pattern if rule else None, "lr": cfg.lr * mult, "base_lr": cfg.lr * mult,
                       "weight_decay": cfg.weight_decay * dmult, "lr_mult": mult})
    return groups


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The configured optimizer over :func:`parameter_groups` (each group keeps ``base_lr`` for the schedule)."""
    param_groups = parameter_groups(model, cfg)
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
