"""Poseur learning benchmark: train configs/poseur/poseur_tiny_synthetic.yaml on 2,000 synthetic images (ground-truth
boxes) within a CPU time budget, evaluate on 200 images of another seed, and report COCO AP with and without the
uncertainty-based keypoint score (the paper's Table 1c effect).

    .venv/bin/python -m bench.bench_poseur_learning                      # full run (default budget 14 min training)
    .venv/bin/python -m bench.bench_poseur_learning --smoke              # ~3 min end-to-end check of the pipeline

How the budget is kept: a short calibration times real training iterations (data loading included) and sets
``train.iters`` so that the cosine schedule ends inside the budget; ``train.max_minutes`` is the hard stop.

Evaluation variants (same trained weights):
  none          keypoint scores = 1: instance score = box score only (GT boxes: all equal) - "no rescoring"
  rle           mean(1 - sigma) per keypoint (RLE's score; the official no-flip score)
  uncertainty   Poseur Eq. 8: 0.7 (1 - exp(-0.2 / sigma_x)) (1 - exp(-0.2 / sigma_y))
  flip_type2    flip test with the official type2 fusion (the published setting)
  flip_type2_none  the same without keypoint scores
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from bench._common import REPO, machine, parser, read_metrics, set_threads, write_json
from regpose.config import load_config, save_config
from regpose.engine.budget import fit_schedule_to_budget, seconds_per_iteration, set_schedule_length
from regpose.checkpoint import load_model_weights
from regpose.engine.evaluator import evaluate_model
from regpose.engine.trainer import train
from regpose.models import build_model

VARIANTS = {  # name: (flip, keypoint_score, flip_fusion)
    "none": (False, "none", "type2"),
    "rle": (False, "rle", "type2"),
    "uncertainty": (False, "uncertainty", "type2"),
    "flip_type2": (True, "rle", "type2"),
    "flip_type2_none": (True, "none", "type2"),
}


def evaluate_variants(cfg, weights: Path, out: Path, names: list[str]) -> dict:
    model = build_model(cfg)
    load_model_weights(model, str(weights))
    model.eval()
    results = {}
    for name in names:
        flip, score, fusion = VARIANTS[name]
        cfg.test.flip = flip
        model.cfg.keypoint_score = score
        model.cfg.flip_fusion = fusion
        t0 = time.time()
        metrics, _ = evaluate_model(cfg, model, torch.device("cpu"), "val", out / "eval", tag=name)
        results[name] = {"AP": metrics["AP"], "AP50": metrics["AP50"], "AP75": metrics["AP75"], "AR": metrics["AR"],
                         "seconds": round(time.time() - t0, 1)}
        print(f"  {name:<16} AP {metrics['AP']:.4f}  AP50 {metrics['AP50']:.4f}  AP75 {metrics['AP75']:.4f}  "
              f"AR {metrics['AR']:.4f}", flush=True)
    return results


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--config", default=str(REPO / "configs" / "poseur" / "poseur_tiny_synthetic.yaml"))
    ap.add_argument("--budget-min", type=float, default=14.0, help="training wall-clock budget in minutes")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--output-dir", default="runs/bench_poseur_learning")
    ap.add_argument("--smoke", action="store_true", help="~3 minute end-to-end check (tiny budget)")
    ap.add_argument("--iters", type=int, default=0, help="fixed iteration count instead of the calibration")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = ap.parse_args()

    set_threads(args.threads)
    budget = 0.5 if args.smoke else args.budget_min
    variants = ["none", "flip_type2"] if args.smoke else args.variants
    out = Path(args.output_dir + ("_smoke" if args.smoke else ""))
    cfg = load_config(args.config, [f"output_dir={out}", *args.overrides])
    t_start = time.time()
    if args.iters:
        sec_per_iter, iters = float("nan"), args.iters
        set_schedule_length(cfg, iters)
        cfg.train.max_minutes = budget
    else:
        sec_per_iter = seconds_per_iteration(cfg, steps=3 if args.smoke else 6)
        # The real loop loads data in a worker process and skips the calibration's first-batch costs: plan 92 %.
        iters = fit_schedule_to_budget(cfg, budget, sec_per_iter)
    cfg.train.eval_period = 0
    print(f"calibration: {sec_per_iter:.3f} s/iteration ({cfg.train.batch_size} crops) -> {iters} iterations "
          f"in {budget:.1f} min", flush=True)

    t_train = time.time()
    train(cfg, device="cpu", overwrite=True)     # each bench run starts afresh
    train_minutes = (time.time() - t_train) / 60
    losses = [r["loss"] for r in read_metrics(out) if "loss" in r]
    print(f"trained {train_minutes:.1f} min; loss {losses[0]:.3f} -> {losses[-1]:.3f}" if losses else
          f"trained {train_minutes:.1f} min", flush=True)

    print("evaluation on 200 synthetic images of another seed (ground-truth boxes):", flush=True)
    results = evaluate_variants(cfg, out / "model_final.pth", out, variants)
    summary = {"config": args.config, "iterations": iters, "sec_per_iter_calibrated": sec_per_iter,
               "train_minutes": round(train_minutes, 2), "total_minutes": round((time.time() - t_start) / 60, 2),
               **machine(), "loss_first": losses[0] if losses else None,
               "loss_last": losses[-1] if losses else None, "variants": results,
               "target_AP": 0.7, "reached": max(v["AP"] for v in results.values()) >= 0.7}
    if "uncertainty" in results and "none" in results:
        summary["uncertainty_gain_AP"] = results["uncertainty"]["AP"] - results["none"]["AP"]
    save_config(cfg, out / "config_resolved.yaml")
    write_json(out / "summary.json", summary)
    print(json.dumps({k: v for k, v in summary.items() if k != "variants"}, indent=1))


if __name__ == "__main__":
    main()
