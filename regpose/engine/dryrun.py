"""Dry run of a config: does its recipe start? One real optimizer step and one evaluation of the full-size model on a
few generated images in the config's keypoint format, at a reduced input size, through the training code's pieces
(dataset and transform, collate, ``build_optimizer`` with the config's parameter groups, warm-up lr, clipping) and
the evaluator (predict, decode, finalize, COCO / CrowdPose / MPII scoring).

What changes from the config, and why (:func:`dry_run_overrides`): generated data instead of the dataset files, a
smaller input (the images are small), batch 2, no loader workers, fp32 (CPU), ground-truth boxes for top-down
evaluation (no detection file), and no weight file read or downloaded (:func:`no_download_overrides`).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import Config, load_config
from ..data.collate import collate
from ..data.datasets import build_dataset, ensure_synthetic
from ..data.keypoints import keypoint_layout
from ..errors import RegposeError
from ..models import build_model
from ..models.base import total_loss
from ..models.registry import get_method
from .evaluator import evaluate_model
from .recipe import no_download_overrides
from .schedule import build_optimizer, iteration_schedule, lr_factor, set_lr
from .trainer import freeze_parameters

__all__ = ["DryRunReport", "dry_run_overrides", "dry_run"]

_IMAGE_SIZE = (160, 128)     # generated images (W, H)
_ONESTAGE_TEST_SIZE = 160    # one-stage short side at test time; every one-stage size is scaled with it


@dataclass
class DryRunReport:
    config: str
    parameters: int
    trainable_tensors: int
    tensors_with_gradient: int
    changed_tensors: int        # trainable tensors the optimizer step moved
    loss: float
    seconds_train: float
    seconds_eval: float
    metrics: dict


def _split(name: str, root: Path, seed: int) -> list[str]:
    w, h = _IMAGE_SIZE
    return [f"data.{name}.ann_files=[]", f"data.{name}.image_dir=", f"data.{name}.root={root}",
            f"data.{name}.synthetic={{num_images: 2, seed: {seed}, size: [{w}, {h}], max_people: 3}}"]


def _reduced_input(cfg: Config, family: str) -> list[str]:
    """Input sizes for the small generated images: half the top-down crop (down to a multiple of the stride 32),
    128 px bottom-up, and every one-stage size (train scales, crop, test) scaled so the test short side is 160 px."""
    if family == "topdown":
        w, h = (max(32, v // 2 // 32 * 32) for v in cfg.data.input_size)
        return [f"data.input_size=[{w}, {h}]"]
    if family == "bottomup":
        return ["data.input_size=[128, 128]"] + (["model.test_input_size=128"] if hasattr(cfg.model,
                                                                                           "test_input_size") else [])
    a = cfg.data.augment.onestage
    f = _ONESTAGE_TEST_SIZE / a.test_size

    def sizes(values) -> str:
        return "[" + ", ".join(str(max(32, round(v * f))) for v in values) + "]"

    return [f"data.augment.onestage.min_sizes={sizes(a.min_sizes)}",
            f"data.augment.onestage.max_size={round(a.max_size * f)}",
            f"data.augment.onestage.crop_pre_sizes={sizes(a.crop_pre_sizes)}",
            f"data.augment.onestage.crop_size={sizes(a.crop_size)}" if a.crop_type.startswith("absolute") else "",
            f"data.augment.onestage.test_size={_ONESTAGE_TEST_SIZE}",
            f"data.augment.onestage.test_max_size={round(a.test_max_size * f)}"]


def dry_run_overrides(cfg: Config, work_dir: Path) -> list[str]:
    """The overrides that turn ``cfg`` into its dry run (see the module docstring)."""
    family = get_method(cfg.method).family
    over = [*no_download_overrides(cfg), *_split("train", work_dir / "train", 0), *_split("val", work_dir / "val", 1),
            *_reduced_input(cfg, family), "train.batch_size=2", "train.accum_steps=1", "train.num_workers=0",
            "train.amp=none", "train.sync_bn=false", "test.batch_size=2", f"output_dir={work_dir / 'run'}"]
    if family == "topdown":
        over += ["test.boxes=gt", "test.detections="]
    return [o for o in over if o]


def _fingerprint(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [p.detach().flatten()[:64].clone() for p in params]


def dry_run(config: str | Path, work_dir: str | Path, overrides: list[str] | None = None) -> DryRunReport:
    """Build ``config``'s full-size model, take one optimizer step on generated data and evaluate it once."""
    work_dir = Path(work_dir)
    base = load_config(config, overrides or [])
    cfg = load_config(config, [*(overrides or []), *dry_run_overrides(base, work_dir)])
    spec = get_method(cfg.method)
    for split in (cfg.data.train, cfg.data.val):
        ensure_synthetic(split, cfg.data.format, keypoint_layout(cfg.data))
    dataset = build_dataset(cfg, "train", spec.transform(cfg, True), spec.family)

    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg)
    freeze_parameters(model, cfg.train.freeze)
    batch = collate([dataset[i] for i in range(cfg.train.batch_size)], getattr(model, "size_divisibility", 1))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(model, cfg.train)
    total, steps = iteration_schedule(cfg.train, len(dataset), 1)
    set_lr(optimizer, lr_factor(0, cfg.train, total, steps))
    before = _fingerprint(trainable)

    t0 = time.perf_counter()
    model.train()
    loss = total_loss(model(batch["images"], batch["targets"]))
    if not math.isfinite(float(loss.detach())):
        raise RegposeError(f"{config}: non-finite loss {float(loss.detach())} at the first step")
    loss.backward()
    with_grad = [p for p in trainable if p.grad is not None]
    if not all(bool(torch.isfinite(p.grad).all()) for p in with_grad):
        raise RegposeError(f"{config}: non-finite gradients at the first step")
    if cfg.train.clip_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip_grad_norm)
    optimizer.step()
    changed = sum(not torch.equal(a, b) for a, b in zip(before, _fingerprint(trainable)))
    optimizer.zero_grad(set_to_none=True)
    del optimizer
    t1 = time.perf_counter()
    metrics, _ = evaluate_model(cfg, model, torch.device("cpu"), "val", work_dir / "run")
    t2 = time.perf_counter()
    return DryRunReport(str(config), sum(p.numel() for p in model.parameters()), len(trainable), len(with_grad),
                        changed, float(loss.detach()), t1 - t0, t2 - t1, metrics or {})
