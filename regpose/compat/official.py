"""Entry points for official checkpoints: ``regpose convert`` and ``regpose reference-check``.

Each released codebase has its converter module here, named by the method's ``MethodSpec.converter``, exposing
``convert_state_dict(official) -> ours`` (every official key consumed or explicitly listed as unused),
``config_from_official(config_json) -> model overrides`` and ``reference_check(folder)``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import atomic_save, check_fit
from ..config import load_config
from ..errors import RegposeError
from ..models import build_model
from ..models.registry import official_converter, official_methods
from ..models.weights import read_state_dict

__all__ = ["load_official_checkpoint", "convert", "reference_check", "format_report",
           "load_npz_state_dict"]


def _converter(method: str):
    conv = official_converter(method)
    if conv is None:
        raise RegposeError(f"no official converter for method '{method}' (known: {', '.join(official_methods())})")
    return conv


def load_npz_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """An official state dict stored as ``.npz`` (the reference folders' ``weights.npz``)."""
    with np.load(path) as z:
        return {k: torch.from_numpy(np.array(z[k])) for k in z.files}


def load_official_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Official checkpoints: plain state dicts (DEKR), ``{"model": ...}`` (detectron2 / QueryPose, also as a
    numpy-only ``.pkl``) or ``{"state_dict": ...}`` (mmpose / Poseur); ``.npz`` state dicts too. Never unpickles
    code (:func:`regpose.models.weights.read_state_dict`)."""
    return read_state_dict(path)


def convert(method: str, checkpoint: str | Path, out: str | Path, config: str | None = None,
            kind: str = "model") -> Path:
    """Convert an official checkpoint to our key names, optionally check it loads into ``config``'s model."""
    conv = _converter(method)
    official = load_official_checkpoint(checkpoint)
    if kind == "rescore":
        if not hasattr(conv, "convert_rescore_state_dict"):
            raise RegposeError(f"--kind rescore: the {method} converter has no rescoring net (DEKR's has)")
        ours = conv.convert_rescore_state_dict(official)
    else:
        ours = conv.convert_state_dict(official)
    if config and kind == "model":
        cfg = load_config(config)
        if cfg.method != method:
            raise RegposeError(f"--config {config} is a '{cfg.method}' config, not '{method}'")
        check_fit(build_model(cfg), ours, f"converted {checkpoint}")
    atomic_save({"model": ours, "source": str(checkpoint), "converted_from": method, "kind": kind}, out)
    return Path(out)


def reference_check(folder: str | Path) -> list[tuple[str, float, float]]:
    """Run our converted model on an official reference folder: (array, max abs error, tolerance) rows."""
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise RegposeError(f"{folder}: not a reference folder (config.json missing)")
    method = json.loads(cfg_path.read_text()).get("_method")
    if not method:
        raise RegposeError(f"{cfg_path}: no '_method' entry")
    return list(_converter(method).reference_check(folder))


def format_report(report: list[tuple[str, float, float]]) -> str:
    width = max([len(n) for n, _, _ in report] + [5])
    lines = [f"{'array':<{width}}  {'max abs err':>12}  {'tolerance':>10}  ok"]
    for name, err, tol in report:
        lines.append(f"{name:<{width}}  {err:>12.3e}  {tol:>10.1e}  {'yes' if err <= tol else 'NO'}")
    bad = sum(err > tol for _, err, tol in report)
    lines.append(f"{len(report) - bad}/{len(report)} arrays within tolerance")
    return "\n".join(lines)
