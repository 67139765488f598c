"""Object keypoint similarity (OKS), computed exactly as pycocotools' ``computeOks`` but vectorised.

OKS between a prediction d and a ground truth g with labelled keypoints L (v > 0)::

    e_k = (dx_k² + dy_k²) / (2 sigma_k)² / (area + eps) / 2,      OKS = mean_{k in L} exp(-e_k)

A ground truth without labelled keypoints measures the distance to its box grown by the box size on each side
(and averages over all K). Shared by the evaluator, DEKR's rescore-net targets and tracking; OKS-NMS between
predictions uses mmpose's symmetric variant (:func:`regpose.ops.pairwise_oks`).
"""
from __future__ import annotations

import numpy as np

__all__ = ["oks_core", "coco_oks"]

_EPS = np.spacing(1)


def oks_core(xd: np.ndarray, yd: np.ndarray, xg: np.ndarray, yg: np.ndarray, vg: np.ndarray, area: np.ndarray,
             bbox: np.ndarray, variances: np.ndarray) -> np.ndarray:
    """Broadcasting OKS. Shapes (any leading batch dims ``...``):
    xd, yd (..., D, 1, K); xg, yg, vg (..., 1, G, K); area (..., 1, G); bbox (..., 1, G, 4) x, y, w, h;
    variances (K,) = (2 sigma)². Returns (..., D, G) float64 with pycocotools' operation order."""
    k1 = np.count_nonzero(vg > 0, axis=-1)                           # (..., 1, G)
    lab = vg > 0
    x0 = (bbox[..., 0] - bbox[..., 2])[..., None]
    x1 = (bbox[..., 0] + bbox[..., 2] * 2)[..., None]
    y0 = (bbox[..., 1] - bbox[..., 3])[..., None]
    y1 = (bbox[..., 1] + bbox[..., 3] * 2)[..., None]
    has = (k1 > 0)[..., None]
    dx = np.where(has, xd - xg, np.maximum(0.0, x0 - xd) + np.maximum(0.0, xd - x1))
    dy = np.where(has, yd - yg, np.maximum(0.0, y0 - yd) + np.maximum(0.0, yd - y1))
    e = (dx ** 2 + dy ** 2) / variances / (area[..., None] + _EPS) / 2
    w = np.where(has, lab, True)
    num = np.where(w, np.exp(-e), 0.0).sum(-1)
    den = np.where(k1 > 0, k1, vg.shape[-1])
    return num / den


def coco_oks(dt_keypoints: np.ndarray, gt_keypoints: np.ndarray, gt_areas: np.ndarray, sigmas: np.ndarray,
               gt_boxes: np.ndarray | None = None) -> np.ndarray:
    """OKS of every prediction against every ground truth of one image, as COCOeval's ``computeOks``.

    dt_keypoints (D, K, 2+) and gt_keypoints (G, K, 3) in pixels, gt_areas (G,), sigmas (K,); gt_boxes (G, 4) x, y,
    w, h are needed only for ground truths without labelled keypoints. Returns (D, G)."""
    d = np.asarray(dt_keypoints, dtype=np.float64)
    g = np.asarray(gt_keypoints, dtype=np.float64)
    if d.shape[0] == 0 or g.shape[0] == 0:
        return np.zeros((d.shape[0], g.shape[0]))
    boxes = np.zeros((len(g), 4)) if gt_boxes is None else np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    var = (np.asarray(sigmas, dtype=np.float64) * 2) ** 2
    return oks_core(d[:, None, :, 0], d[:, None, :, 1], g[None, :, :, 0], g[None, :, :, 1], g[None, :, :, 2],
                    np.asarray(gt_areas, dtype=np.float64)[None], boxes[None], var)
