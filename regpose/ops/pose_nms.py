"""Post-processing of top-down predictions that every top-down method shares: mmpose's rescoring and greedy
OKS-NMS over all crops of one image (Poseur spec 1.6: instance score = box score + mean + max of the keypoint
scores, ``rle_score=True``, then OKS-NMS at 0.9 with the dataset's sigmas and the crop area (200 s_x)(200 s_y)).

Pure numpy on :class:`~regpose.structures.PoseResult`: the models' ``finalize`` calls it (models never import
inference), and so does the converter's official-output check.
"""
from __future__ import annotations

import numpy as np

from ..structures import PoseResult

__all__ = ["rescore", "pairwise_oks", "oks_nms", "topdown_finalize"]


def rescore(result: PoseResult) -> PoseResult:
    """mmpose ``rle_score=True``: instance score = box_score + mean_k(score_k) + max_k(score_k)."""
    if not len(result):
        return result
    kp_scores = result.keypoints[..., 2].astype(np.float64)
    box_score = np.asarray(result.extras.get("box_score", np.ones(len(result))), dtype=np.float64).reshape(-1)
    scores = box_score + kp_scores.mean(-1) + kp_scores.max(-1)
    return PoseResult(result.boxes, result.keypoints, scores.astype(np.float32), dict(result.extras))


def pairwise_oks(keypoints: np.ndarray, areas: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """OKS (N, N) between every two predicted poses of one image, as mmpose's ``oks_iou`` for OKS-NMS:
    exp(-d^2 / (2 (2 sigma)^2 ((a_i + a_j) / 2 + eps))) averaged over all K keypoints (no visibility, the mean area
    of the pair). Not the evaluation's OKS against ground truth (:func:`regpose.evaluation.oks.coco_oks`: labelled
    ground-truth joints only, the ground truth's area)."""
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
    oks = pairwise_oks(keypoints, areas, sigmas)
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
