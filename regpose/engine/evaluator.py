"""Run a model over an evaluation split (sharded over processes), collect people per image, score them.

Every process predicts its contiguous shard (no padding, so nothing is counted twice); rank 0 gathers, groups
the samples of each image (top-down methods have one sample per person box), applies the model's per-image
``finalize`` (e.g. OKS-NMS) and writes a COCO results json. If the split has annotations it is evaluated,
otherwise (COCO test-dev) the json is the deliverable.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..structures import PoseResult, to_coco_results
from . import dist
from .logging import get_logger
from .samplers import InferenceSampler

__all__ = ["build_eval_loader", "run_inference", "collect_results", "evaluate_model", "has_annotations"]


def build_eval_loader(cfg, model, split: str = "val", dataset=None) -> DataLoader:
    from ..data.collate import Collate
    from ..data.datasets import build_dataset
    from ..models.registry import get_method

    spec = get_method(cfg.method)
    if dataset is None:
        dataset = build_dataset(cfg, split, spec.transform(cfg, False), spec.family)
    sampler = InferenceSampler(len(dataset), dist.get_rank(), dist.get_world_size())
    workers = min(cfg.train.num_workers, 4)
    return DataLoader(dataset, batch_size=cfg.test.batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=Collate(getattr(model, "size_divisibility", 1)), persistent_workers=False)


def _to_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    return images.to(device, non_blocking=True)


@torch.no_grad()
def run_inference(model, loader: DataLoader, test_cfg, device: torch.device, desc: str = "eval") -> list:
    """Predict every sample of this rank's shard: list of (sample_index, image_id, meta, PoseResult)."""
    model.eval()
    out = []
    show = dist.is_main_process()
    bar = tqdm(total=len(loader.sampler), desc=desc, unit="img", disable=not show, dynamic_ncols=True,
               leave=False)
    for batch in loader:
        batch["images"] = _to_device(batch["images"], device)
        results = model.predict(batch, test_cfg)
        for meta, res in zip(batch["metas"], results):
            # never gather images across processes (records and raw images stay local)
            light = {k: v for k, v in meta.items() if k not in ("record", "image_raw")}
            out.append((int(meta["sample_index"]), int(meta["image_id"]), light, res))
        bar.update(len(batch["metas"]))
    bar.close()
    return out


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


def has_annotations(gt_path: str) -> bool:
    """COCO-style dicts need a non-empty ``annotations``; MPII's layout is a non-empty list of entries."""
    with open(gt_path) as f:
        gt = json.load(f)
    if isinstance(gt, list):
        return bool(gt)
    return bool(gt.get("annotations"))


def evaluate_model(cfg, model, device: torch.device, split: str = "val", out_dir: str | Path | None = None,
                   dataset=None, tag: str = "") -> tuple[dict | None, Path | None]:
    """Predict the split, write ``results_<split>.json`` and return (metrics or None, results path) on rank 0."""
    from ..data.datasets import evaluation_gt
    from ..evaluation import evaluate

    log = get_logger()
    t0 = time.time()
    loader = build_eval_loader(cfg, model, split, dataset)
    local = run_inference(model, loader, cfg.test, device, desc=f"eval {tag}".strip())
    final = collect_results(model, local, cfg.test, getattr(model, "num_keypoints", 17))
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
    if has_annotations(gt):
        metrics = evaluate(gt, results, dataset=cfg.data.format)
        log.info("evaluated %d images (%d people) in %.1fs", len(final), len(results), time.time() - t0)
    else:
        log.info("%s has no annotations: wrote %s for submission (%d people)", gt, res_path, len(results))
    dist.barrier()
    return metrics, res_path
