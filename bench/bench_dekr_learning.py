"""DEKR learns: train the small synthetic config on 2,000 `regpose synth` images (seed 0) within a CPU time budget,
evaluate COCO OKS AP on 200 images of another seed (seed 1), print the loss / AP curve. Target: AP >= 0.5.

    .venv/bin/python -m bench.bench_dekr_learning [--minutes 14] [--out runs/bench_dekr_learning]
        [--config configs/dekr/dekr_hrnet_tiny_synthetic.yaml] [--threads 2] [--smoke] [key=value ...]

Uses the regular training engine (``regpose.engine.trainer.train``): the run directory holds config.yaml,
metrics.jsonl, checkpoints and the results json. ``--minutes`` caps the training loop (train.max_minutes; the
synthetic data generation before it and the final evaluation after it are not counted).

The schedule is fitted to the budget: a few timed training steps and predictions on this machine give the number
of iterations that fit in ``--minutes`` (with two intermediate evaluations for the AP curve), and the step decays
are placed at 80 % and 93 % of them, so the learning rate decays before the time runs out on any machine. Pass
``--no-calibrate`` (or ``train.iters=N``) to use the config's schedule as is. ``--smoke`` trains a few
iterations on a tiny split to check the wiring (about a minute).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from bench._common import REPO, interleaved, parser, read_metrics, set_threads
from regpose.config import load_config
from regpose.data.collate import collate
from regpose.data.datasets import build_dataset
from regpose.engine.budget import seconds_per_iteration
from regpose.engine.trainer import train
from regpose.models import build_model, get_method

EVALS_IN_LOOP = 2        # intermediate evaluations (the AP curve); the final one runs after the loop


def calibrate(cfg, steps: int = 5) -> tuple[float, float]:
    """Seconds per training iteration and per evaluated image (flip test) of ``cfg``'s model on this machine."""
    t_iter = seconds_per_iteration(cfg, steps=steps, warmup=1)      # also generates the synthetic splits
    spec = get_method(cfg.method)
    val_ds = build_dataset(cfg, "val", spec.transform(cfg, False), spec.family)
    model = build_model(cfg).eval()
    batches = [collate([val_ds[i]], model.size_divisibility) for i in range(3)]
    t = interleaved({i: (lambda b=b: model.predict(b, cfg.test)) for i, b in enumerate(batches)}, runs=1)
    return t_iter, sorted(r["median_ms"] for r in t.values())[1] / 1000


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--config", default=str(REPO / "configs/dekr/dekr_hrnet_tiny_synthetic.yaml"))
    ap.add_argument("--out", default=str(REPO / "runs/bench_dekr_learning"))
    ap.add_argument("--minutes", type=float, default=14.0, help="training-loop budget (train.max_minutes)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="a few iterations on a tiny split (wiring check)")
    ap.add_argument("--no-calibrate", action="store_true", help="keep the config's iterations and steps")
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. train.lr=1e-3")
    args = ap.parse_args()

    threads = set_threads(args.threads)
    over = [f"output_dir={args.out}", f"train.max_minutes={args.minutes}"]
    if args.smoke:
        out = Path(args.out)
        over += [f"data.train.root={out / 'synth_train_smoke'}", "data.train.synthetic.num_images=48",
                 f"data.val.root={out / 'synth_val_smoke'}", "data.val.synthetic.num_images=16",
                 "train.iters=30", "train.steps=[25]", "train.warmup_iters=5", "train.log_period=5",
                 "train.eval_period=15", "train.num_workers=0"]
    cfg = load_config(args.config, over + list(args.overrides))
    if not (args.smoke or args.no_calibrate or any(o.startswith("train.iters=") for o in args.overrides)):
        t_iter, t_img = calibrate(cfg)
        n_val = cfg.data.val.synthetic.num_images or 200
        budget = args.minutes * 60 - EVALS_IN_LOOP * n_val * t_img
        iters = max(50, int(budget / (1.1 * t_iter)))        # 10 % margin for data loading and logging
        over += [f"train.iters={iters}", f"train.steps=[{int(0.8 * iters)},{int(0.93 * iters)}]",
                 f"train.eval_period={iters // (EVALS_IN_LOOP + 1)}"]
        cfg = load_config(args.config, over + list(args.overrides))
        print(f"calibration: {t_iter:.2f} s/iteration, {t_img:.3f} s/evaluated image -> {iters} iterations, "
              f"decays at {cfg.train.steps}, evaluations every {cfg.train.eval_period}")
    print(f"config {args.config}: {cfg.train.iters} iterations x batch {cfg.train.batch_size}, lr {cfg.train.lr}, "
          f"input {cfg.data.input_size}, budget {cfg.train.max_minutes} min, threads {threads}")
    t0 = time.time()
    metrics = train(cfg, device="cpu", overwrite=True)    # a fresh run (and curve) each time the bench runs
    wall = time.time() - t0

    rows = read_metrics(cfg.output_dir)
    train_rows = [r for r in rows if r.get("split") != "val"]
    val_rows = [r for r in rows if r.get("split") == "val"]
    print("\ncurve (training loss averaged over each log period; AP on the 200 validation images):")
    print(f"{'iter':>6} {'loss':>9} {'heatmap':>9} {'offset':>9} {'s/it':>6}   AP")
    aps = {int(r["iter"]): r.get("AP") for r in val_rows}
    for r in train_rows:
        it = int(r["iter"])
        ap_txt = f"{aps[it]:.4f}" if aps.get(it) is not None else ""
        print(f"{it:>6} {r['loss']:>9.5f} {r['loss_heatmap']:>9.5f} {r['loss_offset']:>9.5f} "
              f"{r['iter_time']:>6.2f}   {ap_txt}")
    final_ap = (metrics or {}).get("AP")
    print(f"\nfinal: {json.dumps(metrics)}")
    print(f"AP {final_ap:.4f} (target >= 0.5: {'met' if final_ap is not None and final_ap >= 0.5 else 'NOT met'}); "
          f"wall {wall / 60:.1f} min incl. data generation and evaluation" if final_ap is not None else
          "no final metrics")


if __name__ == "__main__":
    main()
