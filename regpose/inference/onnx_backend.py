"""ONNX Runtime as the network of a regpose model.

:class:`OnnxRuntimeNetwork` is called like the model's eval ``forward`` (``net(images, image_sizes=...)``) and
returns the same structure (dict / tuple / tensor, from the export metadata). :func:`attach_onnx` makes it the
model's forward, so the method's own ``predict`` — flip test, multi-scale, decoding, NMS — runs unchanged on top
of ONNX Runtime: the PyTorch and ONNX paths share every line after the network.

A static export (no ``--dynamic``) accepts other batch sizes (it runs in chunks of its own batch) but not other
image sizes; that case is a one-line error asking for a dynamic export.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError, RegposeError
from .onnx_graph import METADATA_PREFIX, unflatten_outputs

__all__ = ["create_session", "read_metadata", "OnnxRuntimeNetwork", "attach_onnx"]


def _providers(device: str | torch.device) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def create_session(path: str | os.PathLike, device: str | torch.device = "cpu", threads: int | None = None):
    """An ONNX Runtime session for ``path`` (CPU, or CUDA when asked and available) with full graph
    optimisation; ``threads`` intra-op threads (default: torch's thread count, so both backends compare fairly)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise RegposeError("the ONNX backend needs onnxruntime: pip install 'regpose[onnx]'") from None
    p = Path(path)
    if not p.is_file():
        raise RegposeError(f"ONNX model not found: {p}")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = int(threads or torch.get_num_threads())
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(p), sess_options=opts, providers=_providers(device))
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RegposeError(f"{p}: cannot load ONNX model ({first})") from None


def read_metadata(source) -> dict:
    """The regpose metadata of an exported model (a path or a session): method, family, inputs, outputs,
    batch_outputs, dynamic, input_size, num_keypoints, config (YAML text)."""
    session = create_session(source) if isinstance(source, (str, os.PathLike)) else source
    raw = session.get_modelmeta().custom_metadata_map
    meta = {k[len(METADATA_PREFIX):]: v for k, v in raw.items() if k.startswith(METADATA_PREFIX)}
    for k in ("inputs", "outputs", "batch_outputs", "dynamic", "input_size"):
        if k in meta:
            meta[k] = json.loads(meta[k])
    return meta


class OnnxRuntimeNetwork:
    """An exported regpose network behind the eval-``forward`` interface."""

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu", threads: int | None = None):
        self.path = Path(path)
        self.session = create_session(path, device, threads)
        self.meta = read_metadata(self.session)
        if "outputs" not in self.meta:
            raise RegposeError(f"{self.path}: not a regpose export (no regpose metadata); export it with "
                               f"'regpose export CONFIG --weights W --out {self.path.name}'")
        self.method = self.meta.get("method", "")
        self.structure = self.meta["outputs"]
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.batch_outputs = set(self.meta.get("batch_outputs", self.output_names))
        shape = self.session.get_inputs()[0].shape                     # ints (static) or names (dynamic)
        self.static_batch = shape[0] if isinstance(shape[0], int) else None
        self.static_hw = tuple(shape[2:]) if all(isinstance(s, int) for s in shape[2:]) else None

    def __repr__(self) -> str:
        return f"OnnxRuntimeNetwork({str(self.path)!r}, method={self.method!r})"

    def _feeds(self, images: torch.Tensor, extras: dict) -> dict:
        feeds = {"images": images.detach().to("cpu", torch.float32).contiguous().numpy()}
        for name in self.input_names[1:]:
            value = extras.get(name)
            if value is None and name == "image_sizes":   # the forward's own default: unpadded = full input
                value = torch.tensor([list(images.shape[-2:])] * images.shape[0])
            if value is None:
                raise RegposeError(f"{self.path}: the graph needs input '{name}', which the caller did not pass")
            feeds[name] = torch.as_tensor(value).detach().to("cpu", torch.int64).numpy()
        return feeds

    def _session_run(self, feeds: dict) -> list[np.ndarray]:
        """One ONNX Runtime call; its failures (a shape the graph cannot take, ...) are one-line input errors, so
        ``regpose infer`` skips that input and goes on."""
        try:
            return self.session.run(None, feeds)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in feeds.items())
            raise InputError(f"{self.path.name}: ONNX Runtime cannot run on {shapes} ({first})") from None

    def _run(self, feeds: dict) -> list[np.ndarray]:
        b = feeds["images"].shape[0]
        if self.static_batch is None or b == self.static_batch:
            return self._session_run(feeds)
        # static batch: run in chunks of the exported batch, the last one padded by repeating its first sample
        n = self.static_batch
        parts = []
        for s in range(0, b, n):
            chunk = {k: v[s:s + n] for k, v in feeds.items()}
            m = chunk["images"].shape[0]
            if m < n:
                chunk = {k: np.concatenate([v, np.repeat(v[:1], n - m, axis=0)]) for k, v in chunk.items()}
            parts.append((m, self._session_run(chunk)))
        out = []
        for i, name in enumerate(self.output_names):
            if name in self.batch_outputs:
                out.append(np.concatenate([r[i][:m] for m, r in parts]))
            else:
                out.append(parts[0][1][i])
        return out

    def __call__(self, images: torch.Tensor, targets=None, **extras):
        if targets is not None:
            raise RegposeError("the ONNX backend runs inference only (no training targets)")
        if self.static_hw is not None and tuple(images.shape[-2:]) != self.static_hw:
            raise InputError(f"{self.path.name} was exported for {self.static_hw[0]}x{self.static_hw[1]} inputs, "
                             f"this one is {images.shape[-2]}x{images.shape[-1]}: export with --dynamic (or "
                             f"--input-size matching your images)")
        arrays = self._run(self._feeds(images, extras))
        device = images.device
        tensors = [torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in arrays]
        return unflatten_outputs(tensors, self.structure)


def attach_onnx(model: torch.nn.Module, network: OnnxRuntimeNetwork, method: str = "") -> torch.nn.Module:
    """Make ``network`` the eval forward of ``model`` (in place; returns it). Everything else — ``predict``,
    ``finalize``, flip / multi-scale logic and decoding — stays the method's own code. ``method`` (the config's)
    is checked against the export's."""
    if method and network.method and network.method != method:
        raise RegposeError(f"{network.path}: exported from method '{network.method}', the config builds '{method}'")
    k = int(network.meta.get("num_keypoints", 0) or 0)
    if k and k != model.num_keypoints:
        raise RegposeError(f"{network.path}: the graph predicts {k} keypoints, the config's model "
                           f"{model.num_keypoints}")
    model.eval()
    model.forward = network          # instance attribute: nn.Module.__call__ -> ONNX Runtime
    model.onnx_network = network
    return model
