"""Typed dataclasses from plain mappings: the generic machinery under every config section (base layer).

:func:`from_dict` builds a dataclass from a mapping read from YAML, checking every key against the fields (a typo
names the nearest valid key) and every value against the field's type, including bounds attached with
``Annotated[..., Range(...)]`` / ``Regex()``; :func:`to_dict` is the way back; :func:`deep_merge` and
:func:`parse_overrides` combine ``base:`` files and dotted ``key=value`` overrides. Errors are one line naming
the dotted key, raised as :class:`~regpose.errors.ConfigError`. Nothing here knows which sections a regpose
config has (that is :mod:`regpose.config`), so every layer can type its own section with it.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

import yaml

from .errors import ConfigError

__all__ = ["Range", "Regex", "PositiveInt", "NonNegativeInt", "PositiveFloat", "NonNegativeFloat", "Fraction",
           "from_dict", "to_dict", "convert_value", "dotted_keys", "deep_merge", "parse_overrides"]


@dataclass(frozen=True)
class Range:
    """Bounds of a numeric field, attached to its type: ``batch_size: Annotated[int, Range(ge=1)]``. Values are
    checked when the config is typed (files and overrides alike), so a bad value is one line naming its key
    instead of a crash deep in training. (Every float must also be finite: see :func:`convert_value`.)"""
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


def dotted_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key a dataclass accepts (used for 'did you mean' suggestions)."""
    out = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        out.append(key)
        tp = typing.get_type_hints(cls).get(f.name)
        if dataclasses.is_dataclass(tp):
            out.extend(dotted_keys(tp, key + "."))
    return out


def convert_value(value: Any, tp: Any, key: str) -> Any:
    """``value`` (as YAML reads it) checked and converted to the type ``tp`` of the dotted config key ``key``:
    nested dataclasses, lists, fixed-length tuples, unions, literals and ``Annotated`` bounds; floats must be
    finite. Anything else is a :class:`ConfigError` naming ``key`` and the expected type."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Annotated:
        out = convert_value(value, args[0], key)
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
                return convert_value(value, a, key)
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
            return tuple(convert_value(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item_tp = args[0] if args else Any
        items = [convert_value(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): convert_value(v, vt, f"{key}.{k}") for k, v in value.items()}
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
    return deep_merge(to_dict(default), value)


def from_dict(cls: type, data: dict | None, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a plain mapping, checking keys and types recursively."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls, include_extras=True)
    names = {f.name for f in dataclasses.fields(cls)}
    pre = f"{prefix}." if prefix else ""
    for k in data:
        if k not in names:
            former = _former_key(cls, str(k), pre)
            close = [pre + c for c in difflib.get_close_matches(str(k), dotted_keys(cls), n=1, cutoff=0.5)]
            close = [former] if former else close
            hint = f" (did you mean '{close[0]}'?)" if close else f" (valid keys: {', '.join(sorted(names))})"
            raise ConfigError(f"unknown config key '{pre}{k}'{hint}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            value = _field_value(f, hints[f.name], data[f.name])
            kwargs[f.name] = convert_value(value, hints[f.name], f"{pre}{f.name}")
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


_SCALAR = "_scalar_"   # a section's scalar shorthand kept under a mapping merged onto it (see _field_value)


def deep_merge(base: dict, over: dict) -> dict:
    """``over`` onto ``base``, recursively. A mapping given for a key whose base value is a scalar shorthand
    (``backbone: resnet18`` then ``model.backbone.kwargs.x=...``) keeps that scalar under ``_scalar_``, so the
    partial override refines the section instead of silently replacing its name."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and not v.get("_replace_", False):
            out[k] = deep_merge(out[k], v)
        elif isinstance(v, dict) and k in out and not isinstance(out[k], (dict, list)) and out[k] is not None \
                and not v.get("_replace_", False):
            out[k] = {_SCALAR: out[k], **v}
        else:
            if isinstance(v, dict):
                v = {kk: vv for kk, vv in v.items() if kk != "_replace_"}
            out[k] = v
    return out


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
