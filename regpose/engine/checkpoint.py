"""Checkpoints: atomic writes, ``weights_only`` loads, and errors that name the keys that do not fit."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from ..models.weights import LoadReport, load_partial

__all__ = ["atomic_save", "load_checkpoint", "load_state_dict_file", "load_model_weights", "check_fit"]


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``.

    A write interrupted at any point (crash, SIGKILL, full disk) leaves the previous file untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def load_checkpoint(path: str | os.PathLike) -> dict:
    """``torch.load(weights_only=True)`` with one-line errors for missing / corrupt / unsafe files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: cannot read checkpoint ({msg[:200]})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    return obj


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The model state dict inside a checkpoint (ours: ``model``; detectron2: ``model``; mmcv: ``state_dict``)."""
    obj = load_checkpoint(path)
    for key in ("model", "state_dict", "model_state"):
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError(f"{path}: no tensors found (expected a state dict)")
    return state


def check_fit(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Raise one line naming missing, unexpected and shape-mismatched keys, if any."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or mismatched:
        parts = []
        for name, keys in (("missing", missing), ("unexpected", unexpected), ("shape-mismatched", mismatched)):
            if keys:
                shown = ", ".join(keys[:4]) + (f", ... (+{len(keys) - 4})" if len(keys) > 4 else "")
                parts.append(f"{len(keys)} {name} [{shown}]")
        raise CheckpointError(f"{source} does not fit the model: " + "; ".join(parts))


def load_model_weights(model: nn.Module, source: str | os.PathLike | dict, strict: bool = True) -> LoadReport | None:
    """Load weights from a file or state dict into ``model``. With ``strict`` every key must fit; otherwise what
    fits is loaded and the returned report names the rest (refused when (almost) nothing fits, see
    :func:`regpose.models.weights.load_partial`)."""
    state = load_state_dict_file(source) if not isinstance(source, dict) else source
    name = str(source) if not isinstance(source, dict) else "state dict"
    if not strict:
        return load_partial(model, state, name)
    check_fit(model, state, name)
    model.load_state_dict(state)
    return None
