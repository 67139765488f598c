"""Checkpoints: atomic writes, ``weights_only`` loads, and errors that name the keys that do not fit."""
from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError
from .models.weights import LoadReport, load_partial

__all__ = ["atomic_save", "remove_stale_temporaries", "load_checkpoint", "load_state_dict_file",
           "load_model_weights", "check_fit"]


def _temporary(path: Path) -> tuple[int, Path]:
    """A new file ``.<name>.<random>.tmp`` next to ``path``, created with mode 0666 minus the umask (as every other
    file we write: ``mkstemp`` would make it 0600)."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``.

    A write interrupted at any point (crash, SIGKILL, full disk) leaves the previous file untouched; a SIGKILL
    leaves the temporary behind, which :func:`remove_stale_temporaries` deletes when the run starts again."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temporary(path)
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


def remove_stale_temporaries(folder: str | os.PathLike, names: str) -> list[Path]:
    """Delete the temporaries :func:`atomic_save` left in ``folder`` when killed while writing a file whose name
    matches the regular expression ``names`` (each can be as large as a full checkpoint). Only call this when no
    other process writes those files. Returns the removed paths."""
    rx = re.compile(rf"\.(?:{names})\..+\.tmp")
    removed = []
    for p in Path(folder).glob(".*.tmp"):
        if rx.fullmatch(p.name):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _why_unreadable(path: Path, error: Exception) -> str:
    """The reason ``torch.load`` failed, in words a user can act on (never advice to load unsafely)."""
    with open(path, "rb") as f:
        head = f.read(8)
    if not head:
        return "cannot read checkpoint: the file is empty"
    if not head.startswith(b"PK\x03\x04") and head[0] != 0x80:
        return (f"cannot read checkpoint: not a PyTorch file (a zip archive or pickle was expected; it starts with "
                f"{head!r})")
    text = str(error)
    if "Weights only load failed" in text:
        found = re.search(r"GLOBAL (\S+)", text)
        what = f" ({found.group(1)})" if found else ""
        return (f"checkpoint refused: the file contains code or non-tensor objects{what}, which are never loaded "
                f"(a checkpoint must hold only tensors, numbers, strings and containers of them)")
    first = re.split(r"(?<=\.) ", text.strip().splitlines()[0])[0] if text.strip() else type(error).__name__
    return f"cannot read checkpoint: truncated or corrupt ({first[:200]})"


def load_checkpoint(path: str | os.PathLike) -> dict:
    """``torch.load(weights_only=True)`` with one-line errors for missing / corrupt / unsafe files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
        raise CheckpointError(f"{path}: {_why_unreadable(path, e)}") from None
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
