"""DirectPose speed on CPU at the paper's test size (short side 800: an 800x1216 input, spec §2/§7).

    .venv/bin/python bench/bench_directpose_speed.py [--config configs/directpose/directpose_r50_coco.yaml]
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

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from regpose.config import load_config  # noqa: E402
from regpose.engine.bench import count_flops  # noqa: E402
from regpose.models import build_model  # noqa: E402

COMPARE = {
    "querypose_r50": (REPO / "configs" / "querypose" / "querypose_r50_coco.yaml", (800, 1216)),
    "dekr_w32": (REPO / "configs" / "dekr" / "dekr_hrnet_w32_coco_512.yaml", (512, 512)),
}


class Timer:
    """Accumulated wall time inside a module (forward pre/post hooks)."""

    def __init__(self, module):
        self.total = 0.0
        self._t0 = 0.0
        module.register_forward_pre_hook(self._pre)
        module.register_forward_hook(self._post)

    def _pre(self, *_):
        self._t0 = time.perf_counter()

    def _post(self, *_):
        self.total += time.perf_counter() - self._t0


def stats(xs: list[float]) -> dict:
    return {"median_ms": 1000 * statistics.median(xs), "min_ms": 1000 * min(xs), "max_ms": 1000 * max(xs),
            "runs": len(xs)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "directpose" / "directpose_r50_coco.yaml"))
    ap.add_argument("--size", type=int, nargs=2, default=(800, 1216), metavar=("H", "W"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--compare", action="store_true")
    ap.add_argument("--no-flops", action="store_true")
    ap.add_argument("--json", default="")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    cfg = load_config(args.config, args.overrides)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    h, w = args.size
    x = torch.randn(1, 3, h, w)
    parts = {"backbone": model.backbone, "fpn": model.fpn, "cls_tower": model.cls_tower,
             "kpt_head": model.kpt_head, "centerness": model.ctr_pred}
    timers = {k: Timer(m) for k, m in parts.items()}

    others = {}
    if args.compare:
        for name, (path, size) in COMPARE.items():
            ocfg = load_config(path)
            torch.manual_seed(0)
            others[name] = (build_model(ocfg).eval(), torch.randn(1, 3, *size), size)

    report = {"config": str(Path(args.config).resolve().relative_to(REPO)), "input_hw": [h, w],
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "params": sum(p.numel() for p in model.parameters()),
              "params_inference": sum(p.numel() for n, p in model.named_parameters()
                                      if not n.startswith("heatmap_head."))}
    if not args.no_flops:
        flops, _ = count_flops(lambda: model(x))
        report["gflops"], report["gmacs"] = flops / 1e9, flops / 2e9

    times = {"directpose": []}
    times.update({k: [] for k in others})
    shares = {k: [] for k in parts}
    with torch.inference_mode():
        for _ in range(args.warmup):
            model(x)
            for m, xi, _ in others.values():
                m(xi)
        for _ in range(args.runs):
            for t in timers.values():
                t.total = 0.0
            t0 = time.perf_counter()
            model(x)
            dt = time.perf_counter() - t0
            times["directpose"].append(dt)
            for k, t in timers.items():
                shares[k].append(t.total / dt)
            for name, (m, xi, _) in others.items():
                t0 = time.perf_counter()
                m(xi)
                times[name].append(time.perf_counter() - t0)
    report["forward"] = stats(times["directpose"])
    report["breakdown_share"] = {k: round(statistics.median(v), 4) for k, v in shares.items()}
    for name, (_, _, size) in others.items():
        report[f"forward_{name}"] = {**stats(times[name]), "input_hw": list(size)}

    # Post-processing, worst case: every location is a candidate.
    with torch.no_grad():
        model.cls_logits.bias.fill_(10.0)
    meta = {"image_id": 0, "sample_index": 0, "file_name": "", "orig_size": (h, w), "input_size": (h, w),
            "inverse": np.eye(2, 3)}
    batch = {"images": x, "metas": [meta]}
    net, total = [], []
    with torch.inference_mode():
        for i in range(args.warmup + args.runs):
            t0 = time.perf_counter()
            out = model(x)
            t1 = time.perf_counter()
            model.predict(batch, cfg.test)
            t2 = time.perf_counter()
            if i >= args.warmup:
                net.append(t1 - t0)
                total.append(t2 - t1)
        n_cand = int((out["cls_logits"].sigmoid() > cfg.model.pre_nms_thresh).sum())
    post = [t - n for t, n in zip(total, net)]
    report["postprocess_worst_case"] = {**stats(post), "locations_above_threshold": n_cand}

    print(f"{report['config']}  input {h}x{w}  threads {report['threads']}  params {report['params']:,} "
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
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
