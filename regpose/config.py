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
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml

from .errors import ConfigError, RegposeError

__all__ = [
    "ConfigError", "Config", "TrainConfig", "TestConfig", "RuntimeConfig", "LrRule", "EmaConfig", "Range", "Regex", "PositiveInt",
    "NonNegativeInt", "PositiveFloat", "NonNegativeFloat", "Fraction",
    "load_config", "from_dict", "to_dict", "save_config", "apply_overrides", "parse_overrides",
]


@dataclass(frozen=True)
class Range:
    """Bounds of a numeric field, attached to its type: ``batch_size: Annotated[int, Range(ge=1)]``. Values are
    checked when the config is typed (files and overrides alike), so a bad value is one line naming its key
    instead of a crash deep in training. (Every float must also be finite: see :func:`_convert`.)"""
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def describe(self) -> str:
        bounds = ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
        return " and ".join(f"{op} {b:g}" for op, b in bounds if b is not None)

    def check(self, value: float, key: str) -> None:
        if ((self.ge is not None and value < self.ge) or (self.gt is not None and value <= self.gt)
                or (self.le is not None and value > self.le) or (self.lt is not None and value >= self.lt)):
            raise ConfigError(f"{key}: expected a value {self.describe()}, got {value!r}")


@dataclass(frozen=True)
class Regex:
    """Marks a str field as a regular expression (``Annotated[str, Regex()]``): it must compile."""

    def describe(self) -> str:
        return "(a regular expression)"

    def check(self, value: str, key: str) -> None:
        try:
            re.compile(value)
        except re.error as e:
            raise ConfigError(f"{key}: invalid regular expression {value!r} ({e})") from None


PositiveInt = Annotated[int, Range(ge=1)]
NonNegativeInt = Annotated[int, Range(ge=0)]
PositiveFloat = Annotated[float, Range(gt=0)]
NonNegativeFloat = Annotated[float, Range(ge=0)]
Fraction = Annotated[float, Range(ge=0, le=1)]      # probabilities, factors of a base value


# ----------------------------------------------------------------------------------------------------------
# Generic dataclass <-> dict machinery
# ----------------------------------------------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *rules = typing.get_args(tp)
        return " ".join([_type_name(base)] + [r.describe() for r in rules if isinstance(r, (Range, Regex))])
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(tp) if a is not Ellipsis)
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key a dataclass accepts (used for 'did you mean' suggestions)."""
    out = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        out.append(key)
        tp = typing.get_type_hints(cls).get(f.name)
        if dataclasses.is_dataclass(tp):
            out.extend(_all_keys(tp, key + "."))
    return out


def _convert(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Annotated:
        out = _convert(value, args[0], key)
        for rule in args[1:]:
            if isinstance(rule, (Range, Regex)):
                rule.check(out, key)
        return out
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, key)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if origin is Literal:
        if value in args:
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}{hint}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {type(value).__name__} {value!r}")
        return from_dict(tp, value, key)
    if origin in (list, tuple) or tp in (list, tuple):
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values ({_type_name(tp)}), got {len(value)}")
            return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item_tp = args[0] if args else Any
        items = [_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _convert(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected bool (true/false), got {type(value).__name__} {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected int, got {type(value).__name__} {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML reads "1e-4" (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"{key}: expected float, got {type(value).__name__} {value!r}")
        if not math.isfinite(number):  # no config value means NaN or infinity; it would only poison training
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected str, got {type(value).__name__} {value!r}")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _former_key(cls: type, key: str, prefix: str = "") -> str | None:
    """The current full dotted name of a key of section ``cls`` (at dotted ``prefix``) that moved: into a nested
    section (the nested dataclass lists its former names in ``__former_keys__``, e.g. ``pretrained`` ->
    ``backbone.weights``), or to another section of the config (``cls`` lists it in ``__moved_keys__`` with its
    full new name, e.g. ``conv_impl`` -> ``runtime.conv_impl``)."""
    moved_out = getattr(cls, "__moved_keys__", {})
    if key in moved_out:
        return moved_out[key]
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        moved = getattr(hints.get(f.name), "__former_keys__", {})
        if key in moved:
            return f"{prefix}{f.name}.{moved[key]}"
    return None


def _field_value(f: dataclasses.Field, tp: Any, value: Any) -> Any:
    """A nested dataclass field keeps its default instance's values for the keys a config does not give: a
    partial mapping is merged onto them, and a scalar sets the field named by the class's ``__shorthand__``
    (``backbone: resnet50`` = ``backbone: {name: resnet50}``)."""
    if not dataclasses.is_dataclass(tp) or isinstance(value, tp):
        return value
    shorthand = getattr(tp, "__shorthand__", None)
    if shorthand and not isinstance(value, dict):
        value = {shorthand: value}
    elif isinstance(value, dict) and _SCALAR in value:     # a shorthand refined by a partial mapping
        value = dict(value)
        scalar = value.pop(_SCALAR)
        if shorthand and shorthand not in value:
            value = {shorthand: scalar, **value}
    if not isinstance(value, dict):
        return value
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        default = f.default_factory()  # type: ignore[misc]
    elif f.default is not dataclasses.MISSING:
        default = f.default
    else:
        return value
    return _deep_merge(to_dict(default), value)


def from_dict(cls: type, data: dict | None, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a plain mapping, checking keys and types recursively."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls, include_extras=True)
    names = {f.name for f in dataclasses.fields(cls)}
    pre = f"{prefix}." if prefix else ""
    for k in data:
        if k not in names:
            former = _former_key(cls, str(k), pre)
            close = [pre + c for c in difflib.get_close_matches(str(k), _all_keys(cls), n=1, cutoff=0.5)]
            close = [former] if former else close
            hint = f" (did you mean '{close[0]}'?)" if close else f" (valid keys: {', '.join(sorted(names))})"
            raise ConfigError(f"unknown config key '{pre}{k}'{hint}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            value = _field_value(f, hints[f.name], data[f.name])
            kwargs[f.name] = _convert(value, hints[f.name], f"{pre}{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            raise ConfigError(f"missing required config key '{pre}{f.name}'")
    try:
        obj = cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix or cls.__name__}: {e}") from None
    return obj


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain YAML-safe structures (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


# ----------------------------------------------------------------------------------------------------------
# The top-level config
# ----------------------------------------------------------------------------------------------------------
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


# Filled by regpose.data.config at import time (kept there so the data layer owns its own fields).
def _data_config_cls():
    from .data.config import DataConfig
    return DataConfig


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
_SCALAR = "_scalar_"   # a section's scalar shorthand kept under a mapping merged onto it (see _field_value)


def _deep_merge(base: dict, over: dict) -> dict:
    """``over`` onto ``base``, recursively. A mapping given for a key whose base value is a scalar shorthand
    (``backbone: resnet18`` then ``model.backbone.kwargs.x=...``) keeps that scalar under ``_scalar_``, so the
    partial override refines the section instead of silently replacing its name."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and not v.get("_replace_", False):
            out[k] = _deep_merge(out[k], v)
        elif isinstance(v, dict) and k in out and not isinstance(out[k], (dict, list)) and out[k] is not None \
                and not v.get("_replace_", False):
            out[k] = {_SCALAR: out[k], **v}
        else:
            if isinstance(v, dict):
                v = {kk: vv for kk, vv in v.items() if kk != "_replace_"}
            out[k] = v
    return out


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
        merged = _deep_merge(merged, _read_yaml((path.parent / b), seen + (path,)))
    return _deep_merge(merged, raw)


def parse_overrides(items: list[str]) -> dict:
    """``["train.lr=1e-4", "model.num_queries=50"]`` -> nested dict; values are parsed as YAML scalars."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value (e.g. train.lr=1e-4)")
        key, value = item.split("=", 1)
        key = key.strip()
        if not key or any(not p for p in key.split(".")):
            raise ConfigError(f"override {item!r}: empty key")
        try:
            parsed = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            parsed = value
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: '{p}' is both a value and a section")
        node[parts[-1]] = parsed
    return out


def apply_overrides(raw: dict, overrides: list[str] | dict) -> dict:
    over = parse_overrides(overrides) if isinstance(overrides, list) else copy.deepcopy(overrides)
    return _deep_merge(raw, _mark_data_files(over, "the overrides"))


def build_config(raw: dict, name: str = "") -> Config:
    """Type a merged raw mapping: ``method`` chooses the dataclass of the ``model`` section."""
    from .models.registry import get_method, method_names

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
    data_cls = _data_config_cls()
    unknown = set(raw) - {f.name for f in dataclasses.fields(Config)}
    if unknown:
        k = sorted(unknown)[0]
        close = difflib.get_close_matches(k, _all_keys(Config) + ["base"], n=1, cutoff=0.5)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown config key '{k}'{hint}")
    cfg = Config(
        method=method,
        model=from_dict(spec.config_cls, raw.get("model") or {}, "model"),
        data=from_dict(data_cls, _check_data_files(raw.get("data") or {}), "data"),
        train=from_dict(TrainConfig, raw.get("train") or {}, "train"),
        test=from_dict(TestConfig, raw.get("test") or {}, "test"),
        runtime=from_dict(RuntimeConfig, raw.get("runtime") or {}, "runtime"),
        output_dir=_convert(raw.get("output_dir", ""), str, "output_dir"),
        name=_convert(raw.get("name", "") or name, str, "name"),
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
