"""regpose: direct-regression multi-person human pose estimation.

Public API (imported lazily so ``import regpose`` stays light)::

    regpose.load_config(path, overrides)      typed config from YAML
    regpose.build_model(cfg)                  the network a config describes
    regpose.Predictor(config, weights, ...)   images / videos -> PoseResult
    regpose.evaluate(gt, results, dataset)    COCO / CrowdPose OKS AP, MPII PCKh
    regpose.PoseResult                        boxes (N,4), keypoints (N,K,3), scores (N,)
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"
__all__ = ["load_config", "build_model", "Predictor", "evaluate", "PoseResult", "__version__"]

_LAZY = {
    "load_config": ("regpose.config", "load_config"),
    "build_model": ("regpose.models", "build_model"),
    "Predictor": ("regpose.inference.predictor", "Predictor"),
    "evaluate": ("regpose.evaluation", "evaluate"),
    "PoseResult": ("regpose.structures", "PoseResult"),
}


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'regpose' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
