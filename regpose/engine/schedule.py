"""Optimiser with name-pattern parameter groups, learning-rate schedules by iteration, and the total batch a
schedule assumes."""
from __future__ import annotations

import dataclasses
import math
import re

import torch
from torch import nn

from ..config import ConfigError, TrainConfig

__all__ = ["parameter_groups", "build_optimizer", "lr_factor", "set_lr", "total_batch", "scale_to_total_batch",
           "total_batch_messages", "iteration_schedule"]


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


def total_batch(cfg: TrainConfig, world_size: int) -> int:
    """Samples per optimizer step: processes x per-process batch x accumulated micro-batches."""
    return world_size * cfg.batch_size * cfg.accum_steps


def scale_to_total_batch(cfg: TrainConfig, world_size: int) -> TrainConfig:
    """With ``batch_scaling: linear``, the recipe for ``reference_batch`` moved to the effective total batch by
    the linear scaling rule (Goyal et al. 2017; detectron2 REFERENCE_WORLD_SIZE): lr x k, and the warm-up, an
    iteration-based schedule (``iters``, ``steps``) and the eval / checkpoint periods / k, with k = effective /
    reference total batch. An epoch-based schedule already follows the batch (steps per epoch). Otherwise
    ``cfg`` unchanged."""
    total = total_batch(cfg, world_size)
    if cfg.batch_scaling == "none" or cfg.reference_batch <= 0 or total == cfg.reference_batch:
        return cfg
    k = total / cfg.reference_batch

    def iterations(n: int) -> int:
        return max(1, round(n / k)) if n > 0 else n

    by_iteration = cfg.epochs <= 0
    return dataclasses.replace(
        cfg, lr=cfg.lr * k, warmup_iters=iterations(cfg.warmup_iters),
        iters=iterations(cfg.iters) if by_iteration else cfg.iters,
        steps=[iterations(s) for s in cfg.steps] if not cfg.step_epochs else list(cfg.steps),
        eval_period=iterations(cfg.eval_period), checkpoint_period=iterations(cfg.checkpoint_period))


def total_batch_messages(cfg: TrainConfig, scaled: TrainConfig, world_size: int) -> tuple[str, str]:
    """(always-printed line, warning or '') about the effective total batch against the recipe's; ``scaled`` is
    :func:`scale_to_total_batch` of ``cfg``."""
    total, ref = total_batch(cfg, world_size), cfg.reference_batch
    line = (f"total batch {total} = {world_size} process(es) x {cfg.batch_size} per process x {cfg.accum_steps} "
            f"accumulation step(s); recipe: {ref if ref > 0 else 'not recorded'}")
    if ref <= 0 or total == ref:
        return line, ""
    if scaled is not cfg:
        k = total / ref
        changed = [f"{name} {getattr(cfg, name)} -> {getattr(scaled, name)}"
                   for name in ("lr", "warmup_iters", "iters", "steps", "eval_period", "checkpoint_period")
                   if getattr(cfg, name) != getattr(scaled, name)]
        return f"{line}; linear scaling x{k:g}: " + ", ".join(changed), ""
    per_step = world_size * cfg.batch_size
    fix = f"train.accum_steps={ref // per_step} (the recipe's total batch) or " if ref % per_step == 0 else ""
    return line, (f"total batch {total} differs from the recipe's {ref}, but lr, warm-up and schedule are the "
                  f"recipe's; to follow it set {fix}train.batch_scaling=linear (lr x{total / ref:g}, iteration "
                  f"counts x{ref / total:g})")


def iteration_schedule(cfg: TrainConfig, train_size: int, world_size: int) -> tuple[int, list[int]]:
    """(total iterations, lr step iterations): ``epochs`` / ``step_epochs`` converted with the training set size
    (samples per epoch) and the total batch, else ``iters`` / ``steps`` as given."""
    per_epoch = train_size / total_batch(cfg, world_size)
    total = int(math.ceil(cfg.epochs * per_epoch)) if cfg.epochs > 0 else cfg.iters
    steps = [int(round(e * per_epoch)) for e in cfg.step_epochs] if cfg.step_epochs else list(cfg.steps)
    return total, steps
