"""Evaluation: COCO / OCHuman / CrowdPose OKS AP-AR (equal to pycocotools / xtcocotools) and MPII PCKh."""
from __future__ import annotations

from ..errors import DataError
from .coco import COCO_KEYS, CROWDPOSE_KEYS, evaluate_coco
from .oks import coco_oks
from .pckh import evaluate_pckh, format_pckh

__all__ = ["evaluate", "format_metrics", "evaluate_coco", "evaluate_pckh", "coco_oks", "COCO_KEYS",
           "CROWDPOSE_KEYS", "DATASETS"]

DATASETS = ("coco", "crowdpose", "ochuman", "mpii")


def evaluate(gt, results, dataset: str = "coco", sigmas=None) -> dict[str, float]:
    """Score keypoint ``results`` (COCO results json path or list) against ``gt`` (annotation json path or dict).
    ``sigmas``: OKS constants of the run's keypoint layout when it is not the dataset's own (``data.keypoints``).

    coco / ochuman: ``AP AP50 AP75 APm APl AR AR50 AR75 ARm ARl``; crowdpose: ``AP AP50 AP75 AR AR50 AR75 AP_easy
    AP_medium AP_hard`` (fractions; -1 where the reference tools report -1, e.g. no medium people);
    mpii: PCKh@0.5 per joint group, ``PCKh`` and ``PCKh@0.1`` (see :mod:`regpose.evaluation.pckh`)."""
    if dataset == "mpii":
        return evaluate_pckh(gt, results)
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r} (expected one of: {', '.join(DATASETS)})")
    return evaluate_coco(gt, results, dataset, sigmas)


def format_metrics(metrics: dict, dataset: str = "coco") -> str:
    """A table of the metrics (MPII: grouped PCKh table plus the per-joint table)."""
    if dataset == "mpii":
        return format_pckh(metrics)
    keys = [k for k in (CROWDPOSE_KEYS if dataset == "crowdpose" else COCO_KEYS) if k in metrics]
    keys += [k for k in metrics if k not in keys]
    cells = [("-" if metrics[k] is None or metrics[k] < 0 else f"{metrics[k]:.3f}") for k in keys]
    widths = [max(len(k), len(c)) for k, c in zip(keys, cells)]
    head = " | ".join(k.rjust(w) for k, w in zip(keys, widths))
    line = "-+-".join("-" * w for w in widths)
    row = " | ".join(c.rjust(w) for c, w in zip(cells, widths))
    return f"{dataset} keypoints\n{head}\n{line}\n{row}"
