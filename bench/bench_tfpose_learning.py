"""TFPose learning benchmark: train configs/tfpose/tfpose_tiny_synthetic.yaml on 2,000 synthetic images (ground-truth
boxes) within a wall-clock budget, evaluate on 200 images of another seed (target AP >= 0.6), and compare the
paper's ablations at the same budget: the auxiliary heatmap loss (Table 4, +2.3 AP and faster convergence) and
query-to-query attention (Table 1, +1.3 AP).

    .venv/bin/python -m bench.bench_tfpose_learning                       # 3 runs x 14 min training (~45 min)
    .venv/bin/python -m bench.bench_tfpose_learning --variants default    # the AP target only
    .venv/bin/python -m bench.bench_tfpose_learning --smoke               # ~3 min end-to-end check of the pipeline

Variants (each trained from the same seed):
  default   the config as shipped (q2q attention on, auxiliary heatmap loss on, lambda 10)
  no_aux    model.aux_heatmap=false                (Table 4 "off")
  no_q2q    model.q2q_attention=false              (Table 1 "off")

Budget: for each variant a short calibration times real training iterations (data loading included) and sets
``train.iters`` so that the cosine schedule ends inside the budget; ``train.max_minutes`` is the hard stop. Every
variant gets the same wall-clock budget (a cheaper variant does more iterations); ``--same-iters`` instead gives every
variant the iteration count planned for ``default``. Each run is also evaluated half-way (AP@1/2: the convergence
speed the paper's Fig. 5 shows for the auxiliary loss). Results: a table on stdout and ``summary.json``.
Numbers are only meaningful on a quiet machine.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from bench._common import REPO, machine, parser, read_metrics, set_threads, write_json
from regpose.config import load_config, save_config
from regpose.engine.budget import fit_schedule_to_budget, seconds_per_iteration, set_schedule_length
from regpose.engine.trainer import train

VARIANTS = {
    "default": [],
    "no_aux": ["model.aux_heatmap=false"],
    "no_q2q": ["model.q2q_attention=false"],
}
TARGET_AP = 0.6


def run_variant(name: str, args, budget: float, iters: int | None) -> dict:
    out = Path(args.output_dir) / name
    cfg = load_config(args.config, [f"output_dir={out}", *args.overrides, *VARIANTS[name]])
    sec_per_iter = seconds_per_iteration(cfg)
    if iters is None:
        planned = fit_schedule_to_budget(cfg, budget, sec_per_iter, min_iters=50)
    else:
        planned = iters
        set_schedule_length(cfg, planned)
        cfg.train.max_minutes = budget
    # one extra evaluation half-way: the convergence-speed side of the auxiliary loss (paper Fig. 5)
    cfg.train.eval_period = 0 if args.smoke else (planned + 1) // 2        # never again at the last iteration
    print(f"[{name}] calibration {sec_per_iter:.3f} s/iteration ({cfg.train.batch_size} crops) -> {planned} "
          f"iterations in {budget:.1f} min", flush=True)
    t0 = time.time()
    metrics = train(cfg, device="cpu", overwrite=True) or {}    # each bench run starts its variants afresh
    minutes = (time.time() - t0) / 60
    log = read_metrics(out)
    train_rows = [r for r in log if r.get("split") == "train" and "loss" in r]
    last_layer = f"loss_coord_{cfg.model.num_decoder_layers - 1}"
    done = max((int(r["iter"]) for r in train_rows), default=0)
    midway = [r for r in log if r.get("split") == "val" and int(r["iter"]) < done]
    save_config(cfg, out / "config_resolved.yaml")
    return {"AP": metrics.get("AP"), "AP50": metrics.get("AP50"), "AP75": metrics.get("AP75"),
            "APm": metrics.get("APm"), "APl": metrics.get("APl"), "AR": metrics.get("AR"),
            "AP_halfway": midway[0].get("AP") if midway else None,
            "iterations_planned": planned, "iterations_done": done or planned,
            "sec_per_iter_calibrated": round(sec_per_iter, 4), "minutes_with_eval": round(minutes, 2),
            "loss_first": train_rows[0]["loss"] if train_rows else None,
            "loss_last": train_rows[-1]["loss"] if train_rows else None,
            "last_layer_l1_last": train_rows[-1].get(last_layer) if train_rows else None,
            "overrides": VARIANTS[name]}


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--config", default=str(REPO / "configs" / "tfpose" / "tfpose_tiny_synthetic.yaml"))
    ap.add_argument("--budget-min", type=float, default=14.0, help="training wall-clock budget per variant (minutes)")
    ap.add_argument("--variants", default="default,no_aux,no_q2q",
                    help=f"comma-separated subset of {', '.join(VARIANTS)}")
    ap.add_argument("--same-iters", action="store_true",
                    help="train every variant for the iteration count planned for the first one")
    # one compute thread + one data-loader worker fill the 2 cores without OpenMP oversubscription stalls
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--output-dir", default="runs/bench_tfpose_learning")
    ap.add_argument("--smoke", action="store_true", help="~3 minute end-to-end check (20 s of training per variant)")
    ap.add_argument("overrides", nargs="*", help="config overrides key=value, applied to every variant")
    args = ap.parse_args()

    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    set_threads(args.threads)
    budget = 0.33 if args.smoke else args.budget_min
    if args.smoke:
        args.output_dir += "_smoke"
    t_start = time.time()
    results: dict[str, dict] = {}
    fixed_iters = None
    for name in names:
        results[name] = run_variant(name, args, budget, fixed_iters)
        if args.same_iters and fixed_iters is None:
            fixed_iters = results[name]["iterations_planned"]
        r = results[name]
        print(f"[{name}] " + "  ".join(f"{k} {_fmt(r[k])}" for k in ("AP", "AP50", "AP75", "AR"))
              + f"  ({r['iterations_done']} iterations, loss {_fmt(r['loss_first'])} -> {_fmt(r['loss_last'])})",
              flush=True)

    print(f"\n{'variant':<9} {'AP':>7} {'AP50':>7} {'AP75':>7} {'APm':>7} {'APl':>7} {'AR':>7} {'AP@1/2':>7} "
          f"{'iters':>7} {'s/it':>7}")
    for name, r in results.items():
        cells = " ".join(f"{_fmt(r[k]):>7}" for k in ("AP", "AP50", "AP75", "APm", "APl", "AR", "AP_halfway"))
        print(f"{name:<9} {cells} {r['iterations_done']:>7d} {r['sec_per_iter_calibrated']:>7.3f}")
    summary = {"config": args.config, "budget_min_per_variant": budget, **machine(),
               "same_iters": args.same_iters, "total_minutes": round((time.time() - t_start) / 60, 2),
               "target_AP": TARGET_AP, "variants": results}
    if "default" in results:
        ap_default = results["default"]["AP"] or 0.0
        summary["reached_target"] = ap_default >= TARGET_AP
        for other, key in (("no_aux", "aux_loss_gain_AP"), ("no_q2q", "q2q_gain_AP")):
            if other in results and results[other]["AP"] is not None:
                summary[key] = round(ap_default - results[other]["AP"], 4)
    write_json(Path(args.output_dir) / "summary.json", summary)
    print(json.dumps({k: v for k, v in summary.items() if k != "variants"}, indent=1))


if __name__ == "__main__":
    main()
