"""The top-down pipeline every top-down method shares (Poseur, RLE, TFPose).

  person boxes (ground truth, a COCO-results detections json, or any one-stage regpose model)
    -> one raw sample per box -> the method's own transform (centre/scale, affine crop, normalisation)
    -> batches -> ``model.predict`` (one person per crop, mapped back to image pixels through ``meta["inverse"]``)
    -> per image ``model.finalize``: rescoring + OKS-NMS (:func:`topdown_finalize`)

Post-processing follows mmpose's ``TopDownCocoDataset.evaluate`` as the released Poseur models were evaluated
(Poseur spec 1.6): instance score = box score + mean + max of the keypoint scores (``rle_score=True``), then
greedy OKS-NMS at 0.9 with the dataset's sigmas and the crop area (200 s_x)(200 s_y).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from ..errors import DataError
from ..structures import PoseResult

__all__ = ["rescore", "oks_matrix", "oks_nms", "topdown_finalize", "load_detections", "boxes_from_model",
           "gt_boxes"]


# ----------------------------------------------------------------------------------------------------------
# Rescoring and OKS-NMS
# ----------------------------------------------------------------------------------------------------------
def rescore(result: PoseResult) -> PoseResult:
    """mmpose ``rle_score=True``: instance score = box_score + mean_k(score_k) + max_k(score_k)."""
    if not len(result):
        return result
    kp_scores = result.keypoints[..., 2].astype(np.float64)
    box_score = np.asarray(result.extras.get("box_score", np.ones(len(result))), dtype=np.float64).reshape(-1)
    scores = box_score + kp_scores.mean(-1) + kp_scores.max(-1)
    return PoseResult(result.boxes, result.keypoints, scores.astype(np.float32), dict(result.extras))


def oks_matrix(keypoints: np.ndarray, areas: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """Pairwise OKS (N, N) as mmpose's ``oks_iou``: exp(-d^2 / (2 (2 sigma)^2 ((a_i + a_j) / 2 + eps))) averaged
    over all K keypoints (no visibility threshold)."""
    xy = np.asarray(keypoints, dtype=np.float64)[..., :2]
    variances = (np.asarray(sigmas, dtype=np.float64) * 2) ** 2                       # (K,)
    d2 = ((xy[:, None] - xy[None]) ** 2).sum(-1)                                      # (N, N, K)
    a = np.asarray(areas, dtype=np.float64)
    scale = (a[:, None] + a[None]) / 2 + np.spacing(1)                               # (N, N)
    e = d2 / variances / scale[..., None] / 2
    return np.exp(-e).mean(-1)


def oks_nms(keypoints: np.ndarray, scores: np.ndarray, areas: np.ndarray, sigmas: np.ndarray,
            threshold: float = 0.9) -> np.ndarray:
    """Greedy OKS-NMS (mmpose ``oks_nms``): indices kept, highest score first. The OKS matrix is computed once;
    the greedy pass only walks the sorted candidates."""
    n = len(scores)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    # mmpose: scores.argsort()[::-1] (ties: the later entry first)
    order = np.argsort(np.asarray(scores), kind="stable")[::-1]
    oks = oks_matrix(keypoints, areas, sigmas)
    suppressed = np.zeros(n, dtype=bool)
    keep = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= oks[i] > threshold
    return np.asarray(keep, dtype=np.int64)


def topdown_finalize(result: PoseResult, sigmas: np.ndarray | None, oks_threshold: float = 0.9,
                     rescoring: bool = True) -> PoseResult:
    """All crops of one image -> rescored (optional) and OKS-NMS'ed people, best first."""
    if not len(result):
        return result
    if rescoring:
        result = rescore(result)
    if sigmas is None or oks_threshold >= 1.0:
        return result.sorted()
    areas = result.extras.get("area")
    if areas is None:
        b = result.boxes
        areas = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    keep = oks_nms(result.keypoints, result.scores, np.asarray(areas).reshape(-1), sigmas, oks_threshold)
    return result.select(keep)


# ----------------------------------------------------------------------------------------------------------
# Where person boxes come from
# ----------------------------------------------------------------------------------------------------------
def load_detections(path: str | Path, score_threshold: float = 0.0, category_id: int | None = 1) -> dict[int, np.ndarray]:
    """A COCO results json of person boxes -> {image_id: (n, 5) x, y, w, h, score}, boxes below the threshold
    dropped (mmpose ``det_bbox_thr``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"detections file not found: {path}")
    try:
        entries = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(entries, list):
        raise DataError(f"{path}: expected a list of COCO detection results, got {type(entries).__name__}")
    out: dict[int, list] = {}
    for i, d in enumerate(entries):
        if not isinstance(d, dict) or "image_id" not in d or "bbox" not in d:
            raise DataError(f"{path}: entry {i} is not a detection (needs image_id and bbox)")
        if category_id is not None and d.get("category_id", category_id) != category_id:
            continue
        box = d["bbox"]
        if len(box) != 4 or not all(np.isfinite(box)):
            raise DataError(f"{path}: entry {i} has bbox {box!r}; expected 4 finite numbers x, y, w, h")
        score = float(d.get("score", 1.0))
        if score < score_threshold:
            continue
        out.setdefault(int(d["image_id"]), []).append([*map(float, box), score])
    return {k: np.asarray(v, dtype=np.float64).reshape(-1, 5) for k, v in out.items()}


def gt_boxes(annotations: Iterable[dict], width: int, height: int) -> np.ndarray:
    """Ground-truth person boxes of one image as mmpose cleans them (Poseur spec 1.6): clipped to the image,
    only people with labelled keypoints, score 1 -> (n, 5) x, y, w, h, score."""
    out = []
    for a in annotations:
        if a.get("iscrowd", 0) or int(a.get("num_keypoints", 1)) <= 0:
            continue
        x, y, w, h = (float(v) for v in a["bbox"])
        x1, y1 = max(0.0, x), max(0.0, y)
        x2, y2 = min(width - 1.0, x1 + max(0.0, w)), min(height - 1.0, y1 + max(0.0, h))
        if a.get("area", 1) > 0 and x2 > x1 and y2 > y1:
            out.append([x1, y1, x2 - x1, y2 - y1, 1.0])
    return np.asarray(out, dtype=np.float64).reshape(-1, 5)


@torch.no_grad()
def boxes_from_model(model, images: list[np.ndarray], test_cfg, score_threshold: float = 0.0,
                     transform: Callable | None = None) -> list[np.ndarray]:
    """Person boxes from any whole-image (one-stage / bottom-up) regpose model: its people's boxes (or the
    extent of their keypoints) and instance scores -> per image (n, 5) x, y, w, h, score."""
    from ..data.collate import collate

    out = []
    for i, img in enumerate(images):
        h, w = img.shape[:2]
        if transform is None:
            raise DataError("boxes_from_model: the detector's test transform is required")
        sample = transform({"image": img, "image_id": i, "file_name": "", "people": [], "width": w, "height": h})
        batch = collate([sample], getattr(model, "size_divisibility", 1))
        res = model.finalize(model.predict(batch, test_cfg)[0], batch["metas"][0])
        boxes = np.asarray(res.boxes, dtype=np.float64).reshape(-1, 4)
        if len(res) and not np.isfinite(boxes).all():
            kp = res.keypoints[..., :2]
            boxes = np.concatenate([kp.min(1), kp.max(1)], 1)
        keep = res.scores >= score_threshold
        b, s = boxes[keep], res.scores[keep]
        out.append(np.concatenate([b[:, :2], b[:, 2:] - b[:, :2], s[:, None]], 1) if len(b) else np.zeros((0, 5)))
    return out
