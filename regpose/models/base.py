"""The contract between a method's network and the rest of regpose (engine, inference, export).

Batch (made by :func:`regpose.data.collate.collate` from samples a method's transform produced)::

    batch = {
      "images":  Tensor (B, 3, H, W) float32, normalised, zero-padded to a common size,
      "targets": list of B dicts of tensors (training only; contents are method specific),
      "metas":   list of B dicts: image_id, sample_index, file_name, orig_size (h, w), input_hw (h, w)
                 (unpadded), "inverse": (2, 3) float64 affine from network-input pixels to original
                 pixels, plus method-specific entries (e.g. top-down: box, box_score, center, scale).
    }

A :class:`PoseModel` is built by its method's ``build(cfg, keypoints)`` from the full config and the run's keypoint
layout (:class:`~regpose.data.keypoints.KeypointMeta`, ``keypoint_layout(cfg.data)``), which it keeps as ``keypoints``
(``num_keypoints`` = K): the count, flip pairs and OKS sigmas come from there, never from a default;
  * ``forward(images, targets)`` in training returns a dict of weighted loss tensors whose keys start with
    ``loss`` (the engine sums those); other entries are logged only;
  * ``forward(images)`` in eval returns the raw output tensors (this is what ONNX export traces);
  * ``predict(batch, test_cfg)`` returns one :class:`PoseResult` per sample, in original image pixels, with
    flip / multi-scale test as the test config asks;
  * ``finalize(result, meta)`` post-processes all results of one image once every sample of that image is in
    (top-down: OKS-NMS and rescoring over the image's crops; identity for whole-image methods).
"""
from __future__ import annotations

import torch
from torch import nn

from ..data.keypoints import KeypointMeta
from ..structures import PoseResult

__all__ = ["PoseModel", "total_loss"]


def total_loss(losses: dict):
    """The training objective of a loss dict: the sum of its ``loss*`` entries (other entries are logged
    diagnostics, e.g. Poseur's ``sigma_saturated``). Works on tensors and on logged floats alike."""
    return sum(v for k, v in losses.items() if k.startswith("loss"))


class PoseModel(nn.Module):
    #: the keypoint layout the model predicts (set by :meth:`set_keypoints` in ``__init__``)
    keypoints: KeypointMeta
    #: number of keypoints predicted (K of ``keypoints``)
    num_keypoints: int
    #: padded input sizes must be a multiple of this
    size_divisibility: int = 1
    #: names of the eval forward's outputs when it returns a tensor or tuple (ONNX graph output names)
    output_names: tuple[str, ...] = ()

    def set_keypoints(self, keypoints: KeypointMeta) -> None:
        """Record the layout the network is built for (``__init__`` calls it before sizing its heads)."""
        self.keypoints = keypoints
        self.num_keypoints = keypoints.num_keypoints

    def forward(self, images: torch.Tensor, targets: list[dict] | None = None):  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, batch: dict, test_cfg) -> list[PoseResult]:  # pragma: no cover - abstract
        raise NotImplementedError

    def finalize(self, result: PoseResult, meta: dict) -> PoseResult:
        return result

    def export_module(self) -> nn.Module:
        """The module ONNX export traces (default: the network itself, eval-mode ``forward(images)``)."""
        return self
