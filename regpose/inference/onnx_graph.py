"""The interface of an exported regpose graph, shared by the exporter (:mod:`regpose.inference.export`) and the
ONNX Runtime backend (:mod:`regpose.inference.onnx_backend`): the metadata key prefix, and the eval forward's
dict / tuple / tensor <-> the graph's flat tuple of outputs (the structure itself is stored in the metadata)."""
from __future__ import annotations

__all__ = ["METADATA_PREFIX", "flatten_outputs", "unflatten_outputs"]

METADATA_PREFIX = "regpose."


def flatten_outputs(out, structure: dict) -> tuple:
    """An eval forward's result as the graph's flat tuple of outputs, in ``structure["names"]`` order."""
    if structure["kind"] == "tensor":
        return (out,)
    if structure["kind"] == "dict":
        return tuple(out[k] for k in structure["names"])
    return tuple(out)


def unflatten_outputs(values: list, structure: dict):
    """The graph's flat outputs back in the structure the eval forward returns."""
    if structure["kind"] == "tensor":
        return values[0]
    if structure["kind"] == "dict":
        return dict(zip(structure["names"], values))
    return tuple(values)
