"""Shared frame of the ablation learning benchmarks (DirectPose, QueryPose): command line, synthetic-data pinning,
one iteration budget for every variant (calibrated on the full model), the result table and ``results.json``.
Each benchmark keeps only what is its own: variants, extra metrics and checks."""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from bench._common import REPO, machine, parser, set_threads, write_json
from regpose.config import load_config
from regpose.engine.budget import seconds_per_iteration
from regpose.engine.trainer import train


def parse_args(doc: str, variants: dict, default_out: str, argv=None) -> argparse.Namespace:
    """The common options; ``variants`` is validated into a list."""
    ap = parser(doc)
    ap.add_argument("--minutes", type=float, default=20.0, help="wall budget per variant, evaluation included")
    ap.add_argument("--eval-minutes", type=float, default=1.5, help="part of the budget kept for evaluation")
    ap.add_argument("--variants", default=",".join(variants))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=0, help="fixed iteration count (skips the calibration)")
    ap.add_argument("--out", default=str(REPO / "runs" / default_out))
    ap.add_argument("--smoke", action="store_true", help="tiny data and a few iterations: wiring check only")
    ap.add_argument("overrides", nargs="*", help="config overrides for every variant (key=value)")
    args = ap.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in variants]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; choose from {list(variants)}")
    set_threads(args.threads)
    args.out = Path(args.out)
    return args


def common_overrides(args, config: Path, smoke: tuple[int, int, float, int]) -> list[str]:
    """Overrides for every variant. ``--smoke`` (``smoke`` = train images, val images, minutes, iterations):
    tiny synthetic splits generated into ``<out>/smoke/data``; otherwise the config's relative data roots are
    pinned to the repository so the benchmark runs from any working directory."""
    common = list(args.overrides)
    if args.smoke:
        n_train, n_val, minutes, iters = smoke
        args.out = args.out / "smoke"
        data = args.out / "data"
        common += [f"data.train.root={data / f'train_s0_n{n_train}'}", f"data.train.synthetic.num_images={n_train}",
                   f"data.val.root={data / f'val_s1_n{n_val}'}", f"data.val.synthetic.num_images={n_val}",
                   "train.batch_size=4", "train.warmup_iters=2", "train.log_period=2", "test.batch_size=4",
                   "train.num_workers=0"]
        args.minutes, args.eval_minutes = min(args.minutes, minutes), minutes / 2
        args.iters = args.iters or iters
    else:
        base = load_config(config)
        for split in ("train", "val"):
            root = Path(getattr(base.data, split).root)
            if not root.is_absolute():
                common.append(f"data.{split}.root={REPO / root}")
    return common


def schedule_overrides(args, cfg, steps: int, warmup: int) -> tuple[int, float | None, list[str]]:
    """One iteration count for every variant: ``--iters``, or as many of the full model's calibrated steps (the
    fastest of ``steps`` after ``warmup``) as fit 90 % of the training part of the budget. Returns (iterations,
    seconds per iteration or None, overrides setting iterations, time cap, warm-up and step milestones)."""
    train_minutes = max(args.minutes - args.eval_minutes, 0.1)
    iters, t_iter = args.iters, None
    if not iters:
        t_iter = seconds_per_iteration(cfg, steps=steps, warmup=warmup, statistic="min")
        # 0.9: data loading shares the cores with the step; logging, checkpoints.
        iters = max(10, int(train_minutes * 60 * 0.9 / t_iter))
        print(f"calibration: {t_iter:.2f} s/iteration (batch {cfg.train.batch_size}) -> {iters} iterations",
              flush=True)
    sched = [f"train.iters={iters}", f"train.max_minutes={train_minutes}",
             f"train.warmup_iters={min(cfg.train.warmup_iters, max(iters // 10, 1))}"]
    if cfg.train.schedule == "step":
        sched.append(f"train.steps=[{int(iters * 0.75)},{int(iters * 0.92)}]")
    return iters, t_iter, sched


def train_variant(args, config: Path, common: list[str], sched: list[str], name: str, overrides: list[str],
                  metrics: tuple[str, ...]):
    """Train one variant into ``<out>/<name>`` and return (its config, run folder, result row with the
    overrides, iterations done, minutes and ``metrics`` of the final evaluation)."""
    run_dir = args.out / name
    vcfg = load_config(config, common + sched + overrides + [f"output_dir={run_dir}"])
    print(f"\n=== {name}: {' '.join(overrides) or '(paper default)'}; {vcfg.train.iters} iterations", flush=True)
    t0 = time.time()
    final = train(vcfg, overwrite=True) or {}     # each bench run trains its variants afresh
    minutes = (time.time() - t0) / 60
    weights = run_dir / "model_final.pth"
    done = int(torch.load(weights, map_location="cpu", weights_only=True).get("iteration", -1)) \
        if weights.is_file() else -1
    row = {"overrides": overrides, "iterations": done, "minutes": round(minutes, 2),
           **{k: final.get(k) for k in metrics}}
    return vcfg, run_dir, row


def report(args, config: Path, common: list[str], iters: int, t_iter, results: dict, metrics: tuple[str, ...],
           effects: tuple[tuple[str, str], ...], target: float) -> None:
    """Write ``<out>/results.json`` and print the table and the effect of each ablated component on AP."""
    summary = {"config": str(config.relative_to(REPO)), "overrides": common, "iterations_budget": iters,
               "seconds_per_iteration_full": t_iter, "minutes_budget": args.minutes, **machine(),
               "smoke": args.smoke, "results": results}
    if "full" in results and results["full"]["AP"] is not None:
        summary[f"target_AP_{target}_met"] = bool(results["full"]["AP"] >= target)
    write_json(args.out / "results.json", summary)

    print(f"\n{'variant':<12} {'iters':>6} {'min':>6} " + " ".join(f"{k[:6]:>6}" for k in metrics))
    for name, r in results.items():
        vals = " ".join(f"{r[k]:>6.3f}" if isinstance(r[k], float) and not math.isnan(r[k]) else f"{'-':>6}"
                        for k in metrics)
        print(f"{name:<12} {r['iterations']:>6} {r['minutes']:>6.1f} {vals}")
    if "full" in results:
        for other, what in effects:
            if other in results and results["full"]["AP"] is not None and results[other]["AP"] is not None:
                print(f"effect of {what}: {results['full']['AP'] - results[other]['AP']:+.3f} AP")
