"""DirectPose speed on CPU at the paper's test size (short side 800: an 800x1216 input, spec §2/§7).

    .venv/bin/python -m bench.bench_directpose_speed [--config configs/directpose/directpose_r50_coco.yaml]
        [--size 800 1216] [--threads 2] [--runs 7] [--warmup 2] [--compare] [--json out.json]

* forward: eval-mode network (what ONNX export traces), ``torch.inference_mode()``, batch 1, median / min / max
  over ``--runs`` after ``--warmup``; the heatmap branch is training-only and not run;
* breakdown: wall time inside backbone, FPN, classification tower, keypoint head (tower + KPAlign), centerness
  (forward hooks, same runs);
* post-processing: ``predict()`` minus the network, worst case: the classification bias is raised so every
  location passes the 0.05 threshold (1000 candidates per level, NMS over ~4.3k keypoint-extent boxes);
* FLOPs: ``torch.utils.flop_counter`` (convolutions and matrix products, 2 FLOPs per MAC; grid_sample,
  norms and element-wise ops not counted; see regpose.engine.bench);
* ``--compare``: the same forward measurement for QueryPose R-50 at 800x1216 and DEKR HRNet-W32 at 512x512
  (their papers' test sizes), interleaved run by run with DirectPose so machine noise hits all alike.

Latency on a loaded machine is meaningless: final numbers come from a quiet machine.
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

import numpy as np
import torch

from bench._common import (REPO, ModuleTimer, add_timing_args, interleaved, machine, parser, set_threads, summary,
                           write_json)
from regpose.config import load_config
from regpose.engine.bench import count_flops
from regpose.models import build_model

COMPARE = {
    "querypose_r50": (REPO / "configs" / "querypose" / "querypose_r50_coco.yaml", (800, 1216)),
    "dekr_w32": (REPO / "configs" / "dekr" / "dekr_hrnet_w32_coco_512.yaml", (512, 512)),
}


def main(argv=None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--config", default=str(REPO / "configs" / "directpose" / "directpose_r50_coco.yaml"))
    ap.add_argument("--size", type=int, nargs=2, default=(800, 1216), metavar=("H", "W"))
    add_timing_args(ap, runs=7, warmup=2)
    ap.add_argument("--compare", action="store_true")
    ap.add_argument("--no-flops", action="store_true")
    ap.add_argument("--json", default="")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    set_threads(args.threads)

    cfg = load_config(args.config, args.overrides)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    h, w = args.size
    x = torch.randn(1, 3, h, w)
    parts = {"backbone": model.backbone, "fpn": model.fpn, "cls_tower": model.cls_tower,
             "kpt_head": model.kpt_head, "centerness": model.ctr_pred}
    timers = {k: ModuleTimer([m]) for k, m in parts.items()}

    others = {}
    if args.compare:
        for name, (path, size) in COMPARE.items():
            ocfg = load_config(path)
            torch.manual_seed(0)
            others[name] = (build_model(ocfg).eval(), torch.randn(1, 3, *size), size)

    report = {"config": str(Path(args.config).resolve().relative_to(REPO)), "input_hw": [h, w], **machine(),
              "params": sum(p.numel() for p in model.parameters()),
              "params_inference": sum(p.numel() for n, p in model.named_parameters()
                                      if not n.startswith("heatmap_head."))}
    if not args.no_flops:
        flops, _ = count_flops(lambda: model(x))
        report["gflops"], report["gmacs"] = flops / 1e9, flops / 2e9

    inside = {k: [] for k in parts}

    def directpose():
        for t in timers.values():
            t.reset()
        model(x)
        for k, t in timers.items():
            inside[k].append(t.total)

    fns = {"directpose": directpose, **{name: (lambda m=m, xi=xi: m(xi)) for name, (m, xi, _) in others.items()}}
    with torch.inference_mode():
        times = interleaved(fns, runs=args.runs, warmup=args.warmup)
    report["forward"] = times["directpose"]
    report["breakdown_share"] = {k: round(statistics.median(1000 * t / ms for t, ms in zip(
        v[-args.runs:], times["directpose"]["times_ms"])), 4) for k, v in inside.items()}
    for name, (_, _, size) in others.items():
        report[f"forward_{name}"] = {**times[name], "input_hw": list(size)}

    # Post-processing, worst case: every location is a candidate. Network and predict (which runs the network
    # again) interleaved; post-processing = predict - network, round by round.
    with torch.no_grad():
        model.cls_logits.bias.fill_(10.0)
    meta = {"image_id": 0, "sample_index": 0, "file_name": "", "orig_size": (h, w), "input_hw": (h, w),
            "inverse": np.eye(2, 3)}
    batch = {"images": x, "metas": [meta]}
    with torch.inference_mode():
        t = interleaved({"network": lambda: model(x), "predict": lambda: model.predict(batch, cfg.test)},
                        runs=args.runs, warmup=args.warmup)
        n_cand = int((model(x)["cls_logits"].sigmoid() > cfg.model.pre_nms_thresh).sum())
    post = [(p - n) / 1000 for p, n in zip(t["predict"]["times_ms"], t["network"]["times_ms"])]
    report["postprocess_worst_case"] = {**summary(post), "locations_above_threshold": n_cand}

    print(f"{report['config']}  input {h}x{w}  threads {report['threads']} ({report['cpu']})  params {report['params']:,} "
          f"(inference {report['params_inference']:,})" + (f"  GMACs {report['gmacs']:.1f}" if 'gmacs' in report
                                                             else ""))
    f = report["forward"]
    print(f"forward      median {f['median_ms']:8.1f} ms  min {f['min_ms']:8.1f}  max {f['max_ms']:8.1f}")
    print("breakdown    " + "  ".join(f"{k} {100 * v:.1f}%" for k, v in report["breakdown_share"].items()))
    p = report["postprocess_worst_case"]
    print(f"post-process median {p['median_ms']:8.1f} ms  (worst case, {p['locations_above_threshold']} locations "
          f"above threshold)")
    for name in others:
        o = report[f"forward_{name}"]
        print(f"{name:<12} median {o['median_ms']:8.1f} ms  at {o['input_hw'][0]}x{o['input_hw'][1]}")
    if args.json:
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
