"""ONNX export of a method's eval-mode network (``model.export_module()``).

What lives in the graph is whatever the method's eval ``forward`` computes (see each method's ``forward``):
QueryPose the whole pipeline to final boxes, keypoints and pose scores; DEKR the heatmaps and offsets (centre NMS,
pose NMS and matching run after it, shared with PyTorch); DirectPose per-location logits and keypoints (threshold,
top-k and NMS after it); Poseur / RLE / TFPose the per-crop model (coordinates and sigmas).

The graph's inputs are ``images`` (B, 3, H, W) float32 plus every extra tensor the forward takes (QueryPose:
``image_sizes`` (B, 2) int64, the unpadded input sizes). Its outputs are the forward's tensors flattened in a fixed
order; the structure (dict keys / tuple) is stored in the model's metadata with the method and the resolved config,
so :mod:`regpose.inference.onnx_backend` rebuilds exactly what ``forward`` returns and the method's own ``predict``
(flip, multi-scale, decoding) runs unchanged on ONNX Runtime.

``dynamic=True`` makes the batch axis dynamic, and for whole-image methods also height and width (flip test
doubles the batch, multi-scale and varying image sizes change H and W). A dynamic export is verified at a second
input shape too, so a graph that silently froze a shape fails loudly at export time.
"""
from __future__ import annotations

import inspect
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..config import save_config
from ..errors import RegposeError
from ..models.registry import get_method
from .onnx_backend import create_session
from .onnx_graph import METADATA_PREFIX, flatten_outputs, unflatten_outputs
from .runner import image_sample

__all__ = ["ExportError", "ExportResult", "export_onnx", "network_input_names", "describe_outputs",
           "flatten_outputs", "unflatten_outputs", "example_inputs", "METADATA_PREFIX", "DEFAULT_OPSET"]

DEFAULT_OPSET = 17
# Extra (non-image) forward inputs the exporter knows how to make, in graph-input order.
_EXTRA_INPUTS = ("image_sizes",)


class ExportError(RegposeError):
    """A model that cannot be exported (or whose export does not reproduce PyTorch)."""


# ----------------------------------------------------------------------------------------------------------
# Output structure: forward's dict / tuple / tensor <-> a flat tuple of graph outputs
# ----------------------------------------------------------------------------------------------------------
def describe_outputs(out, names: Sequence[str] = ()) -> dict:
    """{"kind": "dict" | "tuple" | "tensor", "names": graph output names} of an eval forward's result. A dict's
    keys name its outputs; a tensor or tuple takes ``names`` (the network's ``output_names``, e.g. DEKR's
    ``heatmap, offset``), else ``output`` / ``output0, output1 ...``."""
    count = 1 if isinstance(out, torch.Tensor) else len(out) if isinstance(out, (tuple, list)) else None
    if names and count is not None and len(names) != count:
        raise ExportError(f"output_names {tuple(names)} name {len(names)} outputs, the eval forward returns {count}")
    if isinstance(out, torch.Tensor):
        return {"kind": "tensor", "names": list(names) or ["output"]}
    if isinstance(out, dict):
        bad = [k for k, v in out.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise ExportError(f"eval forward returns non-tensor entries {bad}; only tensors can be graph outputs")
        return {"kind": "dict", "names": [str(k) for k in out]}
    if isinstance(out, (tuple, list)):
        if not all(isinstance(v, torch.Tensor) for v in out):
            raise ExportError("eval forward returns a tuple with non-tensor entries; only tensors can be graph outputs")
        return {"kind": "tuple", "names": list(names) or [f"output{i}" for i in range(len(out))]}
    raise ExportError(f"eval forward returns {type(out).__name__}; expected a tensor, a tuple or a dict of tensors")


def network_input_names(module: nn.Module) -> list[str]:
    """``images`` plus the extra tensors ``module.forward`` accepts (QueryPose: ``image_sizes``)."""
    params = inspect.signature(module.forward).parameters
    return ["images"] + [n for n in _EXTRA_INPUTS if n in params]


class _GraphModule(nn.Module):
    """``forward(images, *extras)`` -> flat tuple of the network's eval outputs (what the exporter traces)."""

    def __init__(self, net: nn.Module, input_names: list[str], structure: dict):
        super().__init__()
        self.net = net
        self.input_names = list(input_names)
        self.structure = structure

    def forward(self, images: torch.Tensor, *extras: torch.Tensor):
        kwargs = dict(zip(self.input_names[1:], extras))
        return flatten_outputs(self.net(images, **kwargs), self.structure)


# ----------------------------------------------------------------------------------------------------------
# Example inputs
# ----------------------------------------------------------------------------------------------------------
def _family(cfg) -> str:
    return get_method(cfg.method).family


def default_input_size(cfg, model, image_hw: tuple[int, int] = (480, 640)) -> tuple[int, int]:
    """The network input (H, W) the method's test transform makes of an ``image_hw`` picture (top-down: the crop
    size ``data.input_size``), padded to the model's size divisibility."""
    if _family(cfg) == "topdown":
        w, h = cfg.data.input_size
        return int(h), int(w)
    div = max(1, int(getattr(model, "size_divisibility", 1)))
    try:
        sample = image_sample(get_method(cfg.method).transform(cfg, False), np.zeros((*image_hw, 3), np.uint8), 0, "",
                             model.num_keypoints)
        h, w = (int(v) for v in sample["image"].shape[-2:])
    except NotImplementedError:   # a method whose data transform is not there yet: the picture itself
        h, w = image_hw
    return -(-h // div) * div, -(-w // div) * div


def example_inputs(cfg, model, input_hw: tuple[int, int], batch_size: int = 1, seed: int = 0) -> dict:
    """Deterministic example inputs for tracing / verification: normalised-looking noise images and, when the
    forward takes them, ``image_sizes`` (the full input size: no padding)."""
    g = torch.Generator().manual_seed(seed)
    h, w = input_hw
    inputs = {"images": torch.randn(batch_size, 3, h, w, generator=g)}
    names = network_input_names(model.export_module())
    if "image_sizes" in names:
        inputs["image_sizes"] = torch.tensor([[h, w]] * batch_size, dtype=torch.int64)
    return inputs


# ----------------------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------------------
@dataclass
class ExportResult:
    path: Path
    input_names: list[str]
    input_shapes: dict[str, list]
    output_names: list[str]
    dynamic: bool
    max_abs_diff: dict[str, float] = field(default_factory=dict)   # per output, over every verified shape
    max_abs_value: dict[str, float] = field(default_factory=dict)  # per output: largest |PyTorch value|

    def suspicious(self) -> list[str]:
        """Outputs whose ONNX Runtime values differ from PyTorch's by more than fp32 rounding explains
        (1e-4 absolute, or 1e-4 of the output's magnitude when that exceeds 1)."""
        return [k for k, d in self.max_abs_diff.items() if d > 1e-4 * max(1.0, self.max_abs_value.get(k, 1.0))]

    def summary(self) -> str:
        shapes = ", ".join(f"{n} {tuple(s)}" for n, s in self.input_shapes.items())
        lines = [f"wrote {self.path} ({self.path.stat().st_size / 1e6:.1f} MB, "
                 f"{'dynamic' if self.dynamic else 'static'} inputs: {shapes})",
                 f"outputs: {', '.join(self.output_names)}"]
        if self.max_abs_diff:
            worst = max(self.max_abs_diff.values())
            lines.append("ONNX Runtime vs PyTorch max abs diff: " + ", ".join(
                f"{k} {v:.2e}" for k, v in self.max_abs_diff.items()) + f" (worst {worst:.2e})")
            if self.suspicious():
                lines.append(f"warning: {', '.join(self.suspicious())} differ by more than fp32 rounding; check the "
                             f"model (random weights can make outputs chaotic) before deploying")
        return "\n".join(lines)


def _run_torch(net: nn.Module, inputs: dict, structure: dict | None = None):
    with torch.no_grad():
        extras = {k: v for k, v in inputs.items() if k != "images"}
        return net(inputs["images"], **extras)


def _batch_axis_outputs(net: nn.Module, inputs: dict, structure: dict) -> list[str]:
    """Outputs whose first axis is the batch: the ones that grow when the batch does."""
    one = flatten_outputs(_run_torch(net, {k: v[:1] for k, v in inputs.items()}), structure)
    two = flatten_outputs(_run_torch(net, {k: torch.cat([v[:1], v[:1]]) for k, v in inputs.items()}), structure)
    return [n for n, a, b in zip(structure["names"], one, two)
            if a.dim() > 0 and b.dim() > 0 and b.shape[0] == 2 * a.shape[0]]


def _compare(session, net: nn.Module, inputs: dict, structure: dict, input_names: list[str]) -> dict:
    """{output: (max abs diff, max abs PyTorch value)} of ONNX Runtime against PyTorch on ``inputs``."""
    ref = flatten_outputs(_run_torch(net, inputs), structure)
    got = session.run(None, {n: inputs[n].numpy() for n in input_names})
    diffs = {}
    for name, r, o in zip(structure["names"], ref, got):
        r = r.detach().cpu().numpy()
        if r.shape != o.shape:
            raise ExportError(f"ONNX output '{name}' has shape {o.shape} for inputs "
                              f"{ {n: tuple(inputs[n].shape) for n in input_names} }, PyTorch {r.shape}: the graph "
                              f"froze a shape (export without --dynamic, or fix the method's forward)")
        diffs[name] = (float(np.abs(r.astype(np.float64) - o.astype(np.float64)).max()) if r.size else 0.0,
                       float(np.abs(r).max()) if r.size else 0.0)
    return diffs


def export_onnx(model: nn.Module, cfg, out: str | os.PathLike, *, dynamic: bool = False,
                input_hw: tuple[int, int] | None = None, batch_size: int = 1, opset: int = DEFAULT_OPSET,
                verify: bool = True) -> ExportResult:
    """Export ``model.export_module()`` (eval mode, on CPU) to ``out``; store the output structure, the method and
    the resolved config in the model's metadata; check ONNX Runtime against PyTorch (``verify``). The model is
    written next to ``out`` and renamed onto it only once complete and verified: a failed export leaves an
    existing ``out`` as it was."""
    out = Path(out)
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    try:
        result = _export(model, cfg, tmp, dynamic, input_hw, batch_size, opset, verify)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    result.path = out
    return result


def _check_input_size(model, cfg, input_hw: tuple[int, int]) -> None:
    """Whole-image networks take the padded sizes their test transform makes; others fail deep in the trace."""
    div = int(getattr(model, "size_divisibility", 1) or 1)
    if _family(cfg) != "topdown" and (input_hw[0] % div or input_hw[1] % div):
        raise ExportError(f"--input-size {input_hw[0]}x{input_hw[1]}: the '{cfg.method}' network takes sizes that are "
                          f"multiples of {div} (its test transform pads to them)")


def _export(model: nn.Module, cfg, out: Path, dynamic: bool, input_hw, batch_size: int, opset: int,
            verify: bool) -> ExportResult:
    import onnx   # lazy: optional dependency (pip install 'regpose[onnx]'), needed only to export

    model = model.eval().cpu()
    net = model.export_module().eval()
    input_names = network_input_names(net)
    input_hw = tuple(input_hw) if input_hw else default_input_size(cfg, model)
    _check_input_size(model, cfg, input_hw)
    inputs = example_inputs(cfg, model, input_hw, batch_size)
    structure = describe_outputs(_run_torch(net, inputs), getattr(net, "output_names", ()))
    batch_outputs = _batch_axis_outputs(net, inputs, structure)
    topdown = _family(cfg) == "topdown"
    dynamic_axes = None
    if dynamic:
        axes = {0: "batch"} if topdown else {0: "batch", 2: "height", 3: "width"}
        dynamic_axes = {"images": axes}
        if "image_sizes" in input_names:
            dynamic_axes["image_sizes"] = {0: "batch"}
        for name in batch_outputs:
            dynamic_axes[name] = {0: "batch"}
    out.parent.mkdir(parents=True, exist_ok=True)
    graph = _GraphModule(net, input_names, structure).eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # tracer / legacy-exporter chatter
            torch.onnx.export(graph, tuple(inputs[n] for n in input_names), str(out), dynamo=False,
                              input_names=input_names, output_names=structure["names"], dynamic_axes=dynamic_axes,
                              opset_version=opset, do_constant_folding=True)
    except ExportError:
        raise
    except Exception as e:  # noqa: BLE001 - exporter failures are many types; report them in one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"ONNX export of '{cfg.method}' failed: {first}") from e
    finally:
        graph.train(False)      # the exporter restores the wrapper's mode; keep the model in eval
        model.eval()

    proto = onnx.load(str(out), load_external_data=False)     # large models keep their external weight files
    config_path = out.with_suffix(".config.yaml.tmp")
    save_config(cfg, config_path)
    meta = {"method": cfg.method, "family": _family(cfg), "version": __version__,
            "inputs": json.dumps(input_names), "outputs": json.dumps(structure),
            "batch_outputs": json.dumps(batch_outputs), "dynamic": json.dumps(bool(dynamic)),
            "input_size": json.dumps(list(input_hw)), "num_keypoints": str(model.num_keypoints),
            "config": config_path.read_text()}
    config_path.unlink()
    del proto.metadata_props[:]
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_PREFIX + k, v
    onnx.save(proto, str(out))

    result = ExportResult(out, input_names, {n: list(inputs[n].shape) for n in input_names}, structure["names"],
                          bool(dynamic))
    if verify:
        session = create_session(out)
        checks = [inputs]
        if dynamic:   # a second shape: batch 2 and (whole-image methods) another height and width
            div = max(1, int(getattr(model, "size_divisibility", 1)), 32 if not topdown else 1)
            hw = input_hw if topdown else (input_hw[0] + div, max(div, input_hw[1] - div))
            checks.append(example_inputs(cfg, model, hw, 2, seed=1))
        for check in checks:
            for k, (d, v) in _compare(session, net, check, structure, input_names).items():
                result.max_abs_diff[k] = max(result.max_abs_diff.get(k, 0.0), d)
                result.max_abs_value[k] = max(result.max_abs_value.get(k, 0.0), v)
    return result
