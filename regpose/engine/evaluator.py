"""Run a model over an evaluation split (sharded over processes), collect people per image, score them.

Every process predicts its contiguous shard (no padding, so nothing is counted twice); rank 0 gathers, groups
the samples of each image (top-down methods have one sample per person box), applies the model's per-image
``finalize`` (e.g. OKS-NMS) and writes a COCO results json. If the split has annotations it is evaluated,
otherwise (COCO test-dev) the json is the deliverable.

An unreadable image is reported in one line and skipped, as ``regpose infer`` does; the metrics then cover the
other images (COCO-style ground truth without the skipped ones). ``test.strict`` stops at the first instead.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data.collate import CatchErrors, Collate
from ..data.datasets import build_dataset, evaluation_gt, load_records
from ..data.keypoints import keypoint_layout
from ..errors import DataError
from ..evaluation import evaluate
from ..inference.boxes import boxes_of_records
from ..inference.predictor import build_box_source
from ..inference.runner import PoseRunner, write_results
from ..jsonio import read_json
from ..models.registry import get_method
from ..progress import progress
from ..structures import PoseResult, to_coco_results
from . import dist
from .logging import get_logger
from .samplers import InferenceSampler

__all__ = ["build_eval_loader", "run_inference", "collect_results", "evaluate_model", "has_annotations",
           "check_ground_truth", "evaluation_dataset", "person_boxes"]


def person_boxes(cfg, split: str = "val", device: str | torch.device = "cpu") -> dict[int, np.ndarray] | None:
    """The person boxes of a top-down evaluation whose boxes come from a detector model (``test.boxes: model``):
    ``{image_id: (n, 5)}`` over every image of the split, computed here, before the dataset is built. None for
    the boxes the data layer reads itself (ground truth, a detections json) and for whole-image methods."""
    if get_method(cfg.method).family != "topdown" or cfg.test.boxes != "model":
        return None
    records = load_records(getattr(cfg.data, split), cfg.data.format, cfg.data.invalid_annotations,
                           keypoint_layout(cfg.data))
    return boxes_of_records(build_box_source(cfg, records, device), records)


def evaluation_dataset(cfg, split: str = "val", device: str | torch.device = "cpu"):
    """The dataset of an evaluation split, its ground truth checked first (:func:`check_ground_truth`) and its
    person boxes resolved (:func:`person_boxes`, a detector running on ``device``); a split with nothing to
    evaluate is an error, not an empty results file."""
    spec = get_method(cfg.method)
    gt = check_ground_truth(cfg, split)
    dataset = build_dataset(cfg, split, spec.transform(cfg, False), spec.family, person_boxes(cfg, split, device))
    if len(dataset) == 0:
        hint = (" (top-down evaluation with test.boxes=gt crops the annotated people; for a split without them give "
                "person boxes: test.boxes=detections or model)" if spec.family == "topdown" and cfg.test.boxes == "gt"
                else "")
        raise DataError(f"data.{split} ({gt}): nothing to evaluate, the split has no samples{hint}")
    return dataset


def build_eval_loader(cfg, model, split: str = "val", dataset=None, device: str | torch.device = "cpu"
                      ) -> DataLoader:
    if dataset is None:
        dataset = evaluation_dataset(cfg, split, device)
    sampler = InferenceSampler(len(dataset), dist.get_rank(), dist.get_world_size())
    workers = min(cfg.train.num_workers, 4)
    return DataLoader(CatchErrors(dataset), batch_size=cfg.test.batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=Collate(getattr(model, "size_divisibility", 1)), persistent_workers=False)


def run_inference(runner: PoseRunner, loader: DataLoader, desc: str = "eval") -> tuple[list, list]:
    """Predict every sample of this rank's shard: (list of (sample_index, image_id, meta, PoseResult), list of the
    :class:`~regpose.data.collate.SampleError` of samples that could not be loaded; with ``test.strict`` the
    first of those is raised instead)."""
    runner.model.eval()
    strict = runner.test_cfg.strict
    out, errors = [], []
    show = dist.is_main_process()
    bar = progress(total=len(loader.sampler), desc=desc, unit="img", disable=not show, leave=False)
    for batch in loader:
        for e in batch["errors"]:
            if strict:
                raise DataError(f"{e.message} (test.strict=true: evaluation stops at an unreadable image)")
            if e.message not in {x.message for x in errors}:   # one line per image, as `infer` reports inputs
                tqdm.write(f"skipped: {e.message}", file=sys.stderr)
            errors.append(e)
        bar.update(len(batch["errors"]))
        if not batch["metas"]:
            continue
        for meta, res in runner.predict_batch(batch):
            # never gather images across processes (records and raw images stay local)
            light = {k: v for k, v in meta.items() if k not in ("record", "image_raw")}
            out.append((int(meta["sample_index"]), int(meta["image_id"]), light, res))
        bar.update(len(batch["metas"]))
    bar.close()
    return out, errors


def collect_results(runner: PoseRunner, local: list) -> dict[int, PoseResult] | None:
    """Gather every rank's predictions on rank 0; one finalized PoseResult per image id (None elsewhere)."""
    gathered = dist.all_gather_object(local)
    if not dist.is_main_process():
        return None
    seen: set[int] = set()
    per_image: dict[int, list] = {}
    metas: dict[int, dict] = {}
    for part in gathered:
        for sample_index, image_id, meta, res in part:
            if sample_index in seen:  # defensive: a sample counted twice would inflate AP
                continue
            seen.add(sample_index)
            per_image.setdefault(image_id, []).append(res)
            metas.setdefault(image_id, meta)
    return {image_id: runner.finalize(parts, metas[image_id]) for image_id, parts in per_image.items()}


def has_annotations(gt: str | dict | list) -> bool:
    """COCO-style dicts need a non-empty ``annotations``; MPII's layout is a non-empty list of entries."""
    if isinstance(gt, str):
        gt = read_json(gt, "ground-truth")
    if isinstance(gt, list):
        return bool(gt)
    return bool(gt.get("annotations"))


def check_ground_truth(cfg, split: str = "val") -> str:
    """The split's evaluation ground truth, checked before anything is predicted: malformed or non-finite entries,
    CrowdPose without crowdIndex... are reported up front, not after the whole split was predicted (or, while
    training, at the first evaluation hours later). Returns its path."""
    gt = evaluation_gt(cfg, split)
    if has_annotations(gt):
        evaluate(gt, [], dataset=cfg.data.format, sigmas=_sigmas(cfg))   # reads every field scoring needs
    return gt


def _sigmas(cfg):
    """The OKS sigmas of a declared keypoint layout (``data.keypoints``); None scores with the dataset's own."""
    layout = keypoint_layout(cfg.data)
    return None if layout.name == cfg.data.format else layout.sigmas


def _without_skipped_images(gt_path: str, errors: list, fmt: str, num_samples: int) -> str | dict:
    """The ground truth to score against when some images could not be read: COCO-style files without those
    images, so the metrics cover the images that were evaluated (MPII: unchanged, their people count as missed)."""
    log = get_logger()
    skipped = {e.image_id for e in errors if e.image_id is not None}
    what = f"{len(skipped)} unreadable image{'s' * (len(skipped) != 1)} ({len(errors)} of {num_samples} samples)"
    gt = read_json(gt_path, "ground-truth")
    if fmt == "mpii" or not skipped or not isinstance(gt, dict):
        log.warning("skipped %s; their people count as missed (test.strict=true stops instead)", what)
        return gt_path
    gt = dict(gt, images=[im for im in gt.get("images", []) if im.get("id") not in skipped],
              annotations=[a for a in gt.get("annotations") or [] if a.get("image_id") not in skipped])
    log.warning("skipped %s; the metrics cover the other %d images (test.strict=true stops instead)", what,
                len(gt["images"]))
    return gt


def evaluate_model(cfg, model, device: torch.device, split: str = "val", out_dir: str | Path | None = None,
                   dataset=None, tag: str = "") -> tuple[dict | None, Path | None]:
    """Predict the split, write ``results_<split>.json`` and return (metrics or None, results path) on rank 0."""
    log = get_logger()
    t0 = time.time()
    runner = PoseRunner(model, cfg, device=device)
    loader = build_eval_loader(cfg, model, split, dataset, device)
    local, errors = run_inference(runner, loader, desc=f"eval {tag}".strip())
    errors = [e for part in dist.all_gather_object(errors) for e in part]
    final = collect_results(runner, local)
    if final is None:
        dist.barrier()
        return None, None
    out = Path(out_dir or cfg.output_dir)
    res_path = write_results(final, out / f"results_{split}{('_' + tag) if tag else ''}.json",
                             cfg.test.score_threshold, cfg.test.max_people)
    results = read_json(res_path)
    gt = evaluation_gt(cfg, split)
    metrics = None
    if errors:
        gt = _without_skipped_images(gt, errors, cfg.data.format, len(loader.dataset))
    if has_annotations(gt):
        metrics = evaluate(gt, results, dataset=cfg.data.format, sigmas=_sigmas(cfg))
        log.info("evaluated %d images (%d people) in %.1fs", len(final), len(results), time.time() - t0)
    else:
        log.info("%s has no annotations: wrote %s for submission (%d people)", gt, res_path, len(results))
    dist.barrier()
    return metrics, res_path
