"""Using a trained model: :class:`Predictor` (images, videos, tracking, rendering), the one inference pipeline
(:class:`PoseRunner`, also the evaluator's) and its person-box sources, ONNX export and the ONNX Runtime backend,
and the ``regpose infer`` / ``regpose export`` commands.

Submodules are imported lazily so ``import regpose.inference`` stays light."""
from __future__ import annotations

import importlib

__all__ = ["Predictor", "PoseTracker", "Renderer", "export_onnx", "OnnxRuntimeNetwork",
           "attach_onnx", "PoseRunner"]

_LAZY = {
    "Predictor": "predictor", "PoseTracker": "tracking", "Renderer": "visualize",
    "export_onnx": "export", "OnnxRuntimeNetwork": "onnx_backend", "attach_onnx": "onnx_backend",
    "PoseRunner": "runner",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
