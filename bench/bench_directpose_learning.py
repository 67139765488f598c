"""DirectPose learning benchmark on the built-in synthetic crowd data (issue 8, "What it must show" 2).

Trains ``configs/directpose/directpose_r18_synthetic.yaml`` from scratch on 2,000 synthetic images (seed 0) and
evaluates COCO OKS AP on 200 images of another seed (seed 1), for the paper's two headline ablations at the same
budget:

  full         KPAlign (9 groups, separate 16-channel streams) + heatmap auxiliary task (the paper's best setting)
  no_kpalign   the naive keypoint head (``model.head=naive``), heatmap auxiliary task kept
  no_heatmap   KPAlign without the heatmap auxiliary task (``model.heatmap_aux=false``)

Budget: the full model's training step is timed on real batches first; the iteration count is chosen so the full
variant fits in ``--minutes`` of wall time (evaluation included), and every variant trains that same number of
iterations with the same data order and schedule (the cheaper variants finish earlier; their minutes are reported).
``train.max_minutes`` is a hard cap on each variant's training time. Target (issue 8): full AP >= 0.4.

    .venv/bin/python -m bench.bench_directpose_learning [--minutes 20] [--variants full,no_kpalign,no_heatmap]
        [--threads 2] [--iters N] [--out runs/bench_directpose_learning] [--smoke] [key=value ...]

``--smoke`` checks the wiring in about three minutes: tiny synthetic splits (48 train / 16 val images, generated
into the output folder), a few iterations per variant; its AP means nothing. Extra ``key=value`` arguments are
config overrides applied to every variant (e.g. ``train.lr=1e-3``).
"""
from __future__ import annotations

import sys

from bench._ablation import common_overrides, parse_args, report, schedule_overrides, train_variant
from bench._common import REPO
from regpose.config import load_config

CONFIG = REPO / "configs" / "directpose" / "directpose_r18_synthetic.yaml"
VARIANTS = {
    "full": [],
    "no_kpalign": ["model.head=naive"],
    "no_heatmap": ["model.heatmap_aux=false"],
}
METRICS = ("AP", "AP50", "AP75", "APm", "APl", "AR")


def main(argv=None) -> int:
    args = parse_args(__doc__, VARIANTS, "bench_directpose_learning", argv)
    common = common_overrides(args, CONFIG, smoke=(48, 16, 1.0, 4))
    cfg = load_config(CONFIG, common)
    iters, t_iter, sched = schedule_overrides(args, cfg, steps=3, warmup=1)

    results = {}
    for name in args.variants:
        _, _, results[name] = train_variant(args, CONFIG, common, sched, name, VARIANTS[name], METRICS)
        r = results[name]
        print(f"{name}: AP {r['AP'] if r['AP'] is not None else float('nan'):.4f} in {r['minutes']:.1f} min",
              flush=True)

    report(args, CONFIG, common, iters, t_iter, results, METRICS,
           effects=(("no_kpalign", "KPAlign"), ("no_heatmap", "the heatmap auxiliary task")), target=0.4)
    return 0


if __name__ == "__main__":
    sys.exit(main())
