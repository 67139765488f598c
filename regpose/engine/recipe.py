"""``regpose recipe``: the effective training recipe of a config, from the resolved config and the built model and
optimizer, on one screen, so it can be held against a paper's or an official config's value by value.

The model is built on the ``meta`` device with no weights read (nothing is downloaded, no dataset is opened).
Epoch counts are converted to iterations with the official training-set sizes of the public datasets
(:data:`KNOWN_TRAIN_SIZES`); for other files the conversion is reported as unknown.
"""
from __future__ import annotations

import dataclasses
import re
import textwrap
from pathlib import Path

import torch
from torch import nn

from ..config import Config, load_config, to_dict
from ..models import build_model
from ..models.registry import get_method
from .schedule import (iteration_schedule, parameter_groups, scale_to_total_batch, total_batch,
                       total_batch_messages)
from .trainer import freeze_parameters

__all__ = ["KNOWN_TRAIN_SIZES", "no_download_overrides", "trunk_initialisation", "build_on_meta",
           "training_set_size", "recipe_text"]

# Samples per epoch of the public training sets as the official code of each family counts them, keyed by
# (annotation file names, family, whether images without a labelled keypoint are dropped).
KNOWN_TRAIN_SIZES: dict[tuple[tuple[str, ...], str, bool], tuple[int, str]] = {
    (("person_keypoints_train2017.json",), "topdown", False):
        (149_813, "COCO train2017 people with labelled keypoints, as mmpose loads them"),
    (("person_keypoints_train2017.json",), "bottomup", False):
        (64_115, "COCO train2017 images with a person annotation, as DEKR keeps them"),
    (("person_keypoints_train2017.json",), "onestage", False):
        (64_115, "COCO train2017 images with a non-crowd person, as detectron2 keeps them"),
    (("person_keypoints_train2017.json",), "onestage", True):
        (56_599, "COCO train2017 images with a labelled keypoint (detectron2 MIN_KEYPOINTS_PER_IMAGE 1)"),
    (("crowdpose_train.json", "crowdpose_val.json"), "bottomup", False):
        (12_000, "CrowdPose train + val images"),
    (("crowdpose_train.json", "crowdpose_val.json"), "onestage", False):
        (12_000, "CrowdPose train + val images"),
    (("mpii_train.json",), "topdown", False): (22_246, "MPII training people, as mmpose loads them"),
}

_FILE_FIELDS = ("rescore_weights",)          # model fields (besides the trunk's) naming a file to read


def no_download_overrides(cfg: Config) -> list[str]:
    """Dotted overrides under which building and training ``cfg``'s model reads and downloads nothing: no trunk
    weights (and freezing that random trunk allowed), no initial checkpoint, no other weight file. The one place
    to adapt when the weights vocabulary changes (the every-config test and this command both use it)."""
    return (["train.init_weights=", "model.backbone.weights=none", "model.backbone.allow_random_frozen=true"]
            + [f"model.{name}=" for name in _FILE_FIELDS if hasattr(cfg.model, name)])


def trunk_initialisation(cfg: Config) -> str:
    """How the trunk starts, as the config says (the counterpart of :func:`no_download_overrides`)."""
    bb = cfg.model.backbone
    start = ("random initialisation (from scratch)" if bb.weights == "none" else f"from {bb.weights}")
    frozen = (f", {bb.norm}" if bb.norm != "bn" else "") + (f", freeze_at {bb.freeze_at}" if bb.freeze_at else "")
    init = f"; then train.init_weights={cfg.train.init_weights}" if cfg.train.init_weights else ""
    return f"{bb.name} {start}{frozen}{init}"


def build_on_meta(cfg: Config) -> nn.Module:
    """The model ``cfg`` trains (its own freezing and ``train.freeze`` applied) on the meta device: structure,
    names and sizes only, no memory, no file read."""
    quiet = load_config(to_dict(cfg), no_download_overrides(cfg))
    with torch.device("meta"):
        model = build_model(quiet)
    freeze_parameters(model, cfg.train.freeze)
    return model


def training_set_size(cfg: Config, family: str) -> tuple[int, str] | None:
    """(samples per epoch, what they are) for the public training sets in :data:`KNOWN_TRAIN_SIZES`, else None."""
    split = cfg.data.train
    if split.synthetic.num_images > 0:
        return None if family == "topdown" else (split.synthetic.num_images, "synthetic images")
    names = tuple(Path(f).name for f in split.ann_files)
    return KNOWN_TRAIN_SIZES.get((names, family, cfg.data.train_min_keypoints > 0))


# ------------------------------------------------------------------------------------------------------------
# Text
# ------------------------------------------------------------------------------------------------------------
_WIDTH, _LABEL = 118, 15
_TEST_FIELD = re.compile(r"nms|thresh|score|flip|fusion|^test_|max_num|rescore|decrease|match_hmp|absorb|"
                         r"gaussian_kernel|topk|uncertainty")
_LOSS_FIELD = re.compile(r"loss|weight(?!s$)|sigma|radius|focal|prior|flow|noise|supervision|sizes_of_interest|"
                         r"center_sampling|assign|hm_target|normaliz|factor|aux|locator")


_COLOR_FIELDS = {"none": ["kind"], "jitter": ["kind", "brightness", "contrast", "saturation", "hue", "cutout"],
                 "photometric": ["kind", "brightness_delta", "contrast_range", "saturation_range", "hue_delta",
                                 "official_quirks", "cutout", "cutout_prob"]}


def _value(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, str):
        return repr(v) if v == "" or " " in v else v
    return str(v)


def _fields(obj, names=None) -> str:
    names = names if names is not None else [f.name for f in dataclasses.fields(obj)]
    return "  ".join(f"{n}={_value(getattr(obj, n))}" for n in names)


def _section(label: str, *texts: str) -> list[str]:
    """``label`` then each text wrapped to the screen width under a hanging indent."""
    out = []
    for i, text in enumerate(texts):
        lines = textwrap.wrap(text, _WIDTH - _LABEL, break_long_words=False, break_on_hyphens=False) or [""]
        for j, line in enumerate(lines):
            head = label if (i == 0 and j == 0) else ""
            out.append(f"{head:<{_LABEL}}{line}")
    return out


def _model_fields(model_cfg) -> dict[str, list[str]]:
    """The model section's fields split into architecture, targets / losses and test-time settings."""
    groups: dict[str, list[str]] = {"model": [], "loss": [], "test": []}
    for f in dataclasses.fields(model_cfg):
        kind = "test" if _TEST_FIELD.search(f.name) else "loss" if _LOSS_FIELD.search(f.name) else "model"
        if f.name != "backbone":                       # shown under "trunk init"
            groups[kind].append(f.name)
    return groups


def _param_lines(model: nn.Module, cfg: Config, tc) -> list[str]:
    groups = {g["rule"]: g for g in parameter_groups(model, tc)}
    rows = [f"{'rule (first match wins)':<34}{'tensors':>8}{'parameters':>14}   {'lr':<10}{'weight decay':<12}"]
    for rule in [r for r in tc.lr_rules] + [None]:
        pattern = rule.pattern if rule else "(no rule)"
        g = groups.get(pattern if rule else None)
        if g is None:
            note = "optional: matches nothing in this model" if rule and rule.optional else "empty"
            rows.append(f"{pattern:<34}{0:>8}{0:>14}   {note}")
            continue
        n = sum(p.numel() for p in g["params"])
        rows.append(f"{pattern:<34}{len(g['params']):>8}{n:>14,}   {g['lr']:<10.3g}{g['weight_decay']:<12.3g}")
    frozen = [(name, p) for name, p in model.named_parameters() if not p.requires_grad]
    where = sorted({".".join(name.split(".")[:3]) for name, _ in frozen})
    shown = ", ".join(where[:4]) + (", ..." if len(where) > 4 else "")
    rows.append(f"{'frozen':<34}{len(frozen):>8}{sum(p.numel() for _, p in frozen):>14,}   {shown}")
    return rows


def _schedule_texts(cfg: Config, tc, family: str, world_size: int) -> list[str]:
    total = total_batch(tc, world_size)
    warm = (f"warm-up {tc.warmup_iters:,} it (linear from x{tc.warmup_factor:g})" if tc.warmup_iters
            else "no warm-up")
    shape = {"step": f"step x{tc.gamma:g}", "cosine": f"cosine to x{tc.min_lr_factor:g}", "constant": "constant"}
    texts = [f"{shape[tc.schedule]}, {warm}"]
    stepped = tc.schedule == "step"
    size = training_set_size(cfg, family)
    if size is None:
        steps = (f", lr steps at {'epochs ' + _value(tc.step_epochs) if tc.epochs > 0 else _value(tc.steps)}"
                 if stepped else "")
        length = (f"{tc.epochs:g} epochs{steps} (iterations: unknown, they depend on the training-set size)"
                  if tc.epochs > 0 else f"{tc.iters:,} iterations{steps} (epochs: unknown training-set size)")
        texts.append(length)
    else:
        n, what = size
        iters, steps = iteration_schedule(tc, n, world_size)
        per_epoch = n / total
        at = (f"epochs {_value(tc.step_epochs)} = iterations {', '.join(f'{s:,}' for s in steps)}"
              if tc.step_epochs else
              f"iterations {', '.join(f'{s:,}' for s in steps)} = epochs "
              f"{', '.join(f'{s / per_epoch:.1f}' for s in steps)}")
        texts.append(f"{iters:,} iterations = {iters / per_epoch:.1f} epochs of {n:,} ({what}; {per_epoch:,.1f} "
                     f"it/epoch)" + (f"; lr steps at {at if steps else 'none'}" if stepped else ""))
    periods = [f"eval every {tc.eval_period:,} it" if tc.eval_period else "eval at the end",
               f"checkpoint every {tc.checkpoint_period:,} it" if tc.checkpoint_period else "last/best checkpoints",
               f"EMA decay {tc.ema.decay:g}" if tc.ema.enabled else "no EMA",
               f"stop after {tc.max_minutes:g} min" if tc.max_minutes else ""]
    texts.append(", ".join(p for p in periods if p))
    return texts


def recipe_text(cfg: Config, world_size: int = 1, name: str = "") -> str:
    """The effective recipe of ``cfg`` trained by ``world_size`` processes, as printed by ``regpose recipe``."""
    family = get_method(cfg.method).family
    tc = scale_to_total_batch(cfg.train, world_size)
    model = build_on_meta(cfg)
    params = list(model.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    fields = _model_fields(cfg.model)
    batch_line, batch_warning = total_batch_messages(cfg.train, tc, world_size)
    opt = [f"{tc.optimizer} lr {tc.lr:g}", f"weight decay {tc.weight_decay:g}"]
    opt.insert(1, f"momentum {tc.momentum:g}" if tc.optimizer == "sgd" else f"betas {_value(tc.betas)}")
    extras = [f"grad clip L2 {tc.clip_grad_norm:g}" if tc.clip_grad_norm else "no grad clipping",
              f"amp {tc.amp} (CUDA)" if tc.amp != "none" else "fp32",
              "SyncBN" if tc.sync_bn and world_size > 1 else "per-process BN", f"seed {tc.seed}"]
    split = cfg.data.train
    train_files = ", ".join(split.ann_files) or (split.root and f"synthetic {split.root}") or "none"
    val_files = ", ".join(cfg.data.val.ann_files) or (cfg.data.val.root and f"synthetic {cfg.data.val.root}")
    augment = getattr(cfg.data.augment, family)
    color = cfg.data.augment.color
    test = cfg.test
    boxes = "" if family != "topdown" else (
        f", boxes {test.boxes}" + (f" ({test.detections}, score >= {test.det_score_threshold:g})"
                                   if test.boxes == "detections" else ""))
    size = "" if family == "onestage" else f", input {cfg.data.input_size[0]}x{cfg.data.input_size[1]} (WxH)"
    lines = [f"recipe of {name or cfg.name} ({cfg.method}, {family}) for {world_size} process(es)"]
    lines += _section("model", f"{type(model).__name__}: {sum(p.numel() for p in params):,} parameters in "
                               f"{len(params)} tensors, {trainable:,} trainable",
                      _fields(cfg.model, fields["model"]))
    lines += _section("trunk init", trunk_initialisation(cfg))
    lines += _section("optimizer", ", ".join(opt + extras))
    lines += _section("param groups", *_param_lines(model, cfg, tc))
    lines += _section("batch", batch_line, *([batch_warning] if batch_warning else []))
    lines += _section("schedule", *_schedule_texts(cfg, tc, family, world_size))
    lines += _section("data", f"{cfg.data.format}{size}; train {train_files}; val {val_files}")
    lines += _section("augment", f"{family}: {_fields(augment)}",
                      f"color: {_fields(color, _COLOR_FIELDS[color.kind])}"
                      + (f"; train_min_keypoints={cfg.data.train_min_keypoints}"
                         if cfg.data.train_min_keypoints else ""))
    lines += _section("targets/loss", _fields(cfg.model, fields["loss"]) or "(no separate settings)")
    lines += _section("test", f"flip {test.flip}, scales {_value(test.scales)}, batch {test.batch_size}{boxes}, "
                              f"max {test.max_people} people, score >= {test.score_threshold:g}",
                      _fields(cfg.model, fields["test"]))
    return "\n".join(lines)
