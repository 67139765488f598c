"""Typed configuration: dataclasses filled from YAML with ``base:`` inheritance and dotted overrides.

A config file is a YAML mapping whose top level is :class:`Config`. The ``model`` section is typed by the
method named in ``method`` (each method registers its own dataclass), so every key a user writes is
checked against a field that exists. Errors are one line, name the dotted key and suggest the nearest
valid key, and are raised as :class:`ConfigError` (the CLI prints them without a traceback).
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from .data.config import DataConfig
from .errors import ConfigError
from .models.registry import get_method, method_names
from .typed import (Fraction, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Range, Regex, convert_value,
                    deep_merge, dotted_keys, from_dict, parse_overrides, to_dict)

__all__ = [
    "ConfigError", "Config", "TrainConfig", "TestConfig", "RuntimeConfig", "LrRule", "EmaConfig", "Range", "Regex", "PositiveInt",
    "NonNegativeInt", "PositiveFloat", "NonNegativeFloat", "Fraction",
    "load_config", "from_dict", "to_dict", "save_config", "apply_overrides", "parse_overrides",
]


@dataclass
class LrRule:
    """Parameters whose name matches ``pattern`` (a regular expression, ``re.search``) get lr x ``lr_mult``
    and weight decay x ``decay_mult``. The first matching rule wins. Papers need these: QueryPose trains its
    flow at x10, Poseur / Deformable DETR sampling offsets at x0.1, detectors often scale the backbone.
    A rule that matches no trainable parameter is an error (a typo would silently train at the base lr), unless
    it is ``optional``: a rule for a parameter only some variants of the model have (e.g. Poseur's learned
    reference points, which exist only with ``model.query_init: learned``)."""
    pattern: Annotated[str, Regex()]
    lr_mult: NonNegativeFloat = 1.0
    decay_mult: NonNegativeFloat = 1.0
    optional: bool = False


@dataclass
class EmaConfig:
    enabled: bool = False
    decay: Fraction = 0.9998
    warmup: NonNegativeInt = 2000        # effective decay ramps as decay * (1 - exp(-iter / warmup)), YOLOX style
    eval_with_ema: bool = True


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping. Lengths are in iterations; ``epochs`` (if > 0) overrides ``iters`` and
    ``step_epochs`` overrides ``steps`` once the training set size is known."""
    batch_size: PositiveInt = 2       # images (or crops) per process
    iters: NonNegativeInt = 1000
    epochs: NonNegativeInt = 0
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: NonNegativeFloat = 1e-4
    weight_decay: NonNegativeFloat = 1e-4
    momentum: Fraction = 0.9
    betas: tuple[Annotated[float, Range(ge=0, lt=1)], Annotated[float, Range(ge=0, lt=1)]] = (0.9, 0.999)
    lr_rules: list[LrRule] = field(default_factory=list)
    schedule: Literal["step", "cosine", "constant"] = "step"
    steps: list[NonNegativeInt] = field(default_factory=list)
    step_epochs: list[NonNegativeInt] = field(default_factory=list)
    gamma: PositiveFloat = 0.1
    min_lr_factor: Fraction = 0.0     # cosine floor as a fraction of the base lr
    warmup_iters: NonNegativeInt = 0
    warmup_factor: Fraction = 0.001   # lr factor at iteration 0 of the linear warm-up
    clip_grad_norm: NonNegativeFloat = 0.0   # 0 disables clipping
    accum_steps: PositiveInt = 1      # gradient accumulation: optimizer step every N iterations' batches
    max_minutes: NonNegativeFloat = 0.0   # wall-clock budget: stop early (then save and evaluate); 0 = no limit
    # Total batch (processes x batch_size x accum_steps) the recipe's lr and schedule were tuned for; 0 = none.
    # Training prints the effective total batch and warns when it differs.
    reference_batch: NonNegativeInt = 0
    # linear: when the effective total batch differs from reference_batch, scale lr by their ratio and divide the
    # warm-up, an iteration-based schedule and the eval / checkpoint periods by it (detectron2 REFERENCE_WORLD_SIZE)
    batch_scaling: Literal["none", "linear"] = "none"
    amp: Literal["none", "fp16", "bf16"] = "none"   # autocast on CUDA only; CPU runs fp32
    ema: EmaConfig = field(default_factory=EmaConfig)
    sync_bn: bool = False
    seed: int = 0
    deterministic: bool = False
    num_workers: NonNegativeInt = 2
    log_period: PositiveInt = 20
    eval_period: NonNegativeInt = 0   # iterations between evaluations; 0 evaluates only at the end
    checkpoint_period: NonNegativeInt = 0   # iterations between periodic checkpoints; 0 keeps only last/best
    best_metric: str = "AP"
    tensorboard: bool = False
    skip_corrupt_images: bool = False  # skip unreadable training images with a counted warning
    init_weights: str = ""            # optional checkpoint to initialise from (ours or converted)
    freeze: list[Annotated[str, Regex()]] = field(default_factory=list)  # patterns of parameters kept frozen


@dataclass
class TestConfig:
    """Evaluation and inference options shared by all methods (method specific ones live in ``model``)."""
    batch_size: PositiveInt = 1
    flip: bool = False
    scales: list[PositiveFloat] = field(default_factory=lambda: [1.0])
    score_threshold: float = 0.0      # people below this instance score are dropped from results
    max_people: NonNegativeInt = 100
    boxes: Literal["gt", "detections", "model"] = "gt"   # top-down methods: where person boxes come from
    detections: str = ""              # COCO results json of person boxes (boxes: detections)
    det_score_threshold: float = 0.0
    detector_config: str = ""         # a one-stage regpose config giving boxes (boxes: model)
    detector_weights: str = ""
    strict: bool = False              # evaluation stops at an unreadable image (default: skipped and counted)


@dataclass
class RuntimeConfig:
    """How a model computes, never what: implementation switches that leave the outputs equal (up to float
    rounding), kept apart from the paper's knobs in ``model``. Each method reads the ones it has."""
    channels_last: bool = True        # CPU: run convolutions in NHWC memory (faster; same numbers)
    conv_impl: Literal["direct", "winograd"] = "winograd"   # QueryPose keypoint-decoder 3x3 convs at CPU inference
    parallel_chunks: bool = True      # QueryPose CPU inference: proposal chunks on worker threads
    attention_sampler: Literal["auto", "gather", "grid_sample"] = "auto"   # Poseur / TFPose deformable attention
    adaptive_conv_impl: Literal["auto", "grid_sample", "deform_conv2d"] = "auto"   # DEKR adaptive convolutions


@dataclass
class Config:
    method: str
    model: Any
    data: Any
    train: TrainConfig = field(default_factory=TrainConfig)
    test: TestConfig = field(default_factory=TestConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    output_dir: str = ""              # default: runs/<config file stem>
    name: str = ""                    # default: config file stem


# ----------------------------------------------------------------------------------------------------------
# Loading: base inheritance, overrides, typing
# ----------------------------------------------------------------------------------------------------------


# Hidden key put next to a split's files while merging: [data.format declared with them, where they were set].
_FILES_FORMAT = "_files_format_"


def _mark_data_files(raw: dict, source: str) -> dict:
    """Record, next to each split's ``ann_files`` / ``root`` that ``raw`` sets, the ``data.format`` the same
    mapping declares (or None). Merging carries the mark with the files, so :func:`_check_data_files` can tell
    when a later base or override changed the format but not the files (e.g. COCO files in a CrowdPose run)."""
    data = raw.get("data")
    if not isinstance(data, dict):
        return raw
    fmt = data.get("format")
    for split in ("train", "val"):
        section = data.get(split)
        if isinstance(section, dict) and ("ann_files" in section or "root" in section):
            section[_FILES_FORMAT] = None if fmt is None else [fmt, source]
    return raw


def _check_data_files(data: dict) -> dict:
    """Remove the marks of :func:`_mark_data_files` and refuse files written for another keypoint format."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    fmt = data.get("format")
    for split in ("train", "val"):
        if not isinstance(data.get(split), dict):
            continue
        data[split] = dict(data[split])
        mark = data[split].pop(_FILES_FORMAT, None)
        if mark and fmt is not None and mark[0] != fmt:
            raise ConfigError(f"data.{split}: its files were set in {mark[1]} for data.format '{mark[0]}', but the "
                              f"resolved data.format is '{fmt}' (a later base or override changed the format "
                              f"without the files; in 'base:' lists later files win)")
    return data


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: circular 'base:' inheritance")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else "invalid YAML"
        raise ConfigError(f"{path}: invalid YAML ({first})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    bases = raw.pop("base", None)
    _mark_data_files(raw, path.name)
    if bases is None:
        return raw
    merged: dict = {}
    for b in [bases] if isinstance(bases, str) else list(bases):
        merged = deep_merge(merged, _read_yaml((path.parent / b), seen + (path,)))
    return deep_merge(merged, raw)


def apply_overrides(raw: dict, overrides: list[str] | dict) -> dict:
    over = parse_overrides(overrides) if isinstance(overrides, list) else copy.deepcopy(overrides)
    return deep_merge(raw, _mark_data_files(over, "the overrides"))


def build_config(raw: dict, name: str = "") -> Config:
    """Type a merged raw mapping: ``method`` chooses the dataclass of the ``model`` section."""
    raw = dict(raw)
    method = raw.get("method")
    if not isinstance(method, str):
        raise ConfigError(f"missing required config key 'method' (one of: {', '.join(method_names())})")
    try:
        spec = get_method(method)
    except KeyError:
        close = difflib.get_close_matches(method, method_names(), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(method_names())})"
        raise ConfigError(f"method: unknown method '{method}'{hint}") from None
    unknown = set(raw) - {f.name for f in dataclasses.fields(Config)}
    if unknown:
        k = sorted(unknown)[0]
        close = difflib.get_close_matches(k, dotted_keys(Config) + ["base"], n=1, cutoff=0.5)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown config key '{k}'{hint}")
    cfg = Config(
        method=method,
        model=from_dict(spec.config_cls, raw.get("model") or {}, "model"),
        data=from_dict(DataConfig, _check_data_files(raw.get("data") or {}), "data"),
        train=from_dict(TrainConfig, raw.get("train") or {}, "train"),
        test=from_dict(TestConfig, raw.get("test") or {}, "test"),
        runtime=from_dict(RuntimeConfig, raw.get("runtime") or {}, "runtime"),
        output_dir=convert_value(raw.get("output_dir", ""), str, "output_dir"),
        name=convert_value(raw.get("name", "") or name, str, "name"),
    )
    if not cfg.output_dir:
        cfg.output_dir = os.path.join("runs", cfg.name or method)
    return cfg


def load_config(path: str | os.PathLike | dict, overrides: list[str] | dict | None = None) -> Config:
    """Read a YAML config (following ``base:``), apply dotted overrides, and type it."""
    if isinstance(path, dict):
        raw, name = _mark_data_files(copy.deepcopy(path), "the given mapping"), str(path.get("name", ""))
    else:
        p = Path(path)
        raw, name = _read_yaml(p), p.stem
    if overrides:
        raw = apply_overrides(raw, overrides)
    return build_config(raw, name)


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config (every field, defaults included) so a run can be reproduced."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
