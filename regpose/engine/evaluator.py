"""Run a model over an evaluation split (sharded over processes), collect people per image, score them.

Every process predicts its contiguous shard (no padding, so nothing is counted twice); rank 0 gathers, groups
the samples of each image (top-down methods have one sample per person box), applies the model's per-image
``finalize`` (e.g. OKS-NMS) and writes a COCO results json. If the split has annotations it is evaluated,
otherwise (COCO test-dev) the json is the deliverable.

An unreadable image is reported in one line and skipped, as ``regpose infer`` does; the metrics then cover the
other images (COCO-style ground truth without the skipped ones). ``test.strict`` stops at the first instead.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data.keypoints import keypoint_layout
from ..errors import DataError
from ..jsonio import read_json
from ..structures import PoseResult, to_coco_results
from . import dist
from .logging import get_logger
from .samplers import InferenceSampler

__all__ = ["build_eval_loader", "run_inference", "collect_results", "evaluate_model", "has_annotations",
           "check_ground_truth", "evaluation_dataset"]


def evaluation_dataset(cfg, split: str = "val"):
    """The dataset of an evaluation split, its ground truth checked first (:func:`check_ground_truth`); a split
    with nothing to evaluate is an error, not an empty results file."""
    from ..data.datasets import build_dataset
    from ..models.registry import get_method

    spec = get_method(cfg.method)
    gt = check_ground_truth(cfg, split)
    dataset = build_dataset(cfg, split, spec.transform(cfg, False), spec.family)
    if len(dataset) == 0:
        hint = (" (top-down evaluation with test.boxes=gt crops the annotated people; for a split without them give "
                "person boxes: test.boxes=detections or model)" if spec.family == "topdown" and cfg.test.boxes == "gt"
                else "")
        raise DataError(f"data.{split} ({gt}): nothing to evaluate, the split has no samples{hint}")
    return dataset


def build_eval_loader(cfg, model, split: str = "val", dataset=None) -> DataLoader:
    from ..data.collate import CatchErrors, Collate

    if dataset is None:
        dataset = evaluation_dataset(cfg, split)
    sampler = InferenceSampler(len(dataset), dist.get_rank(), dist.get_world_size())
    workers = min(cfg.train.num_workers, 4)
    return DataLoader(CatchErrors(dataset), batch_size=cfg.test.batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=Collate(getattr(model, "size_divisibility", 1)), persistent_workers=False)


def _to_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    return images.to(device, non_blocking=True)


@torch.no_grad()
def run_inference(model, loader: DataLoader, test_cfg, device: torch.device, desc: str = "eval"
                  ) -> tuple[list, list]:
    """Predict every sample of this rank's shard: (list of (sample_index, image_id, meta, PoseResult), list of the
    :class:`~regpose.data.collate.SampleError` of samples that could not be loaded; with ``test_cfg.strict`` the
    first of those is raised instead)."""
    model.eval()
    out, errors = [], []
    show = dist.is_main_process()
    bar = tqdm(total=len(loader.sampler), desc=desc, unit="img", disable=not show, dynamic_ncols=True,
               leave=False)
    for batch in loader:
        for e in batch["errors"]:
            if test_cfg.strict:
                raise DataError(f"{e.message} (test.strict=true: evaluation stops at an unreadable image)")
            if e.message not in {x.message for x in errors}:   # one line per image, as `infer` reports inputs
                tqdm.write(f"skipped: {e.message}", file=sys.stderr)
            errors.append(e)
        bar.update(len(batch["errors"]))
        if not batch["metas"]:
            continue
        batch["images"] = _to_device(batch["images"], device)
        results = model.predict(batch, test_cfg)
        for meta, res in zip(batch["metas"], results):
            # never gather images across processes (records and raw images stay local)
            light = {k: v for k, v in meta.items() if k not in ("record", "image_raw")}
            out.append((int(meta["sample_index"]), int(meta["image_id"]), light, res))
        bar.update(len(batch["metas"]))
    bar.close()
    return out, errors


def collect_results(model, local: list, test_cfg, num_keypoints: int) -> dict[int, PoseResult] | None:
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
    final = {}
    for image_id, parts in per_image.items():
        res = PoseResult.concat(parts, num_keypoints)
        res = model.finalize(res, metas[image_id])
        if len(res):
            keep = res.scores >= test_cfg.score_threshold
            res = res.select(np.nonzero(keep)[0]).sorted()
            res = res.select(np.arange(min(len(res), test_cfg.max_people)))
        final[image_id] = res
    return final


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
    from ..data.datasets import evaluation_gt
    from ..evaluation import evaluate

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
    from ..data.datasets import evaluation_gt
    from ..evaluation import evaluate

    log = get_logger()
    t0 = time.time()
    loader = build_eval_loader(cfg, model, split, dataset)
    local, errors = run_inference(model, loader, cfg.test, device, desc=f"eval {tag}".strip())
    errors = [e for part in dist.all_gather_object(errors) for e in part]
    final = collect_results(model, local, cfg.test, model.num_keypoints)
    if final is None:
        dist.barrier()
        return None, None
    results = []
    for image_id in sorted(final):
        results.extend(to_coco_results(final[image_id], image_id))
    out = Path(out_dir or cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    res_path = out / f"results_{split}{('_' + tag) if tag else ''}.json"
    tmp = res_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results))
    tmp.replace(res_path)
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
