"""Method name -> builder table. Each method module registers one :class:`MethodSpec` at import time.

A small explicit table (not a run-time dict registry of every component): a config's ``method`` key picks the
dataclass that types its ``model`` section and the function that builds the network from the full config.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable, Literal, Mapping

__all__ = ["MethodSpec", "register_method", "get_method", "method_names", "official_converter", "official_methods",
           "detect_official"]

# Modules that define methods; imported lazily so `import regpose` stays cheap.
_METHOD_MODULES = {
    "dekr": "regpose.models.dekr",
    "poseur": "regpose.models.poseur",
    "rle": "regpose.models.rle",
    "querypose": "regpose.models.querypose",
    "tfpose": "regpose.models.tfpose",
    "directpose": "regpose.models.directpose",
}


@dataclass(frozen=True)
class MethodSpec:
    """What the engine needs to know about a method.

    name:          the config's ``method`` value
    config_cls:    dataclass typing the config's ``model`` section
    build:         ``build(cfg: Config, keypoints: KeypointMeta) -> PoseModel``: the network of the full config for
                   the run's keypoint layout (``regpose.data.keypoints.keypoint_layout(cfg.data)``; see
                   :mod:`regpose.models.base`)
    family:        ``bottomup`` / ``onestage`` (whole images) or ``topdown`` (one person crop per sample)
    transform:     ``transform(cfg: Config, train: bool) -> Callable[[raw_sample], sample]``: augmentation and
                   target encoding, run in data-loader workers (see :mod:`regpose.data.datasets` for the raw
                   sample and :mod:`regpose.models.base` for the sample it must return)
    converter:     dotted module of the official-checkpoint converter (``regpose.compat.<method>``: see
                   :mod:`regpose.compat.official` for what it exposes), "" when the method has none; a string so
                   that models never import the surface
    commands:      extra ``regpose`` commands of the method, command name -> dotted module of the surface exposing
                   ``HELP``, ``add_arguments(parser)`` and ``run(args)`` (e.g. DEKR's ``train-rescore``)
    """
    name: str
    config_cls: type
    build: Callable
    family: Literal["bottomup", "onestage", "topdown"]
    transform: Callable
    converter: str = ""
    commands: Mapping[str, str] = field(default_factory=dict)


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    _REGISTRY[spec.name] = spec
    return spec


def _load(name: str) -> None:
    if name not in _REGISTRY and name in _METHOD_MODULES:
        importlib.import_module(_METHOD_MODULES[name])


def get_method(name: str) -> MethodSpec:
    _load(name)
    if name not in _REGISTRY:
        raise KeyError(name)
    return _REGISTRY[name]


def method_names() -> list[str]:
    """Every method: the package's (each imported to register itself) and any registered since (e.g. by tests)."""
    for n in _METHOD_MODULES:
        _load(n)
    return sorted(_REGISTRY)


def official_methods() -> list[str]:
    """Methods whose released code published checkpoints that regpose converts (``MethodSpec.converter``)."""
    return [name for name in method_names() if get_method(name).converter]


def official_converter(name: str):
    """The converter module of ``name``'s official checkpoints (``convert_state_dict``, ``config_from_official``,
    ``reference_check``: see :mod:`regpose.compat.official`), or None when the method released none. Imported by
    name: models never import the surface."""
    try:
        module = get_method(name).converter
    except KeyError:
        return None
    return importlib.import_module(module) if module else None


def detect_official(state: dict) -> str | None:
    """The method whose official code wrote the state dict ``state`` (recognised by its key names, see each
    converter's ``is_official``), or None (e.g. a regpose checkpoint)."""
    return next((m for m in official_methods() if official_converter(m).is_official(state)), None)
