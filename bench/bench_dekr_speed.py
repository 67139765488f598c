"""DEKR speed on CPU: network forward (W32 at 512x512 by default), the adaptive convolution's share of it, MACs,
and the post-processing cost of the official single-image inference.

    .venv/bin/python bench/bench_dekr_speed.py [--config configs/dekr/dekr_hrnet_w32_coco_512.yaml]
        [--threads 2] [--runs 7] [--warmup 2] [--size 512] [--compare] [--json out.json]

* forward: ``torch.inference_mode()``, batch 1, median / min / max over ``--runs`` after ``--warmup``;
  ``--compare`` also times the official ``deform_conv2d`` formulation of the adaptive convolution in the same
  process (runs interleaved, so machine noise hits both alike);
* adaptive-conv share: wall time inside the 2 x K-branch adaptive convolutions (forward hooks) / forward time;
* MACs: ``torch.utils.flop_counter`` FLOPs / 2 of convolutions and matrix products (the adaptive convolution's
  tap contraction is a matmul, so it is counted like the official summary counts the deformable conv); BN,
  interpolation, grid_sample and element-wise ops are not counted (official W32: 45.385 GMAC);
* post-processing: ``model.predict`` on a 480x640 image (input 512x704, flip test, scale 1, rescoring on) with
  heads biased so 30 people are proposed, minus the time spent in the network = resize, flip merge, upsampling,
  center NMS, pose NMS, scoring, back-mapping and rescoring; reported as a share of the forward time of the
  two (plain + flipped) passes.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from regpose.config import load_config  # noqa: E402
from regpose.data.collate import collate  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402
from regpose.models import build_model, get_method  # noqa: E402
from regpose.models.dekr import PoseRescorer, PredictOKSNet  # noqa: E402
from regpose.models.layers.adaptive_conv import AdaptiveConv2d  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


class Timer:
    """Accumulates wall time spent inside modules (forward pre/post hooks)."""

    def __init__(self, modules):
        self.total = 0.0
        self._t0 = {}
        self.handles = []
        for m in modules:
            self.handles.append(m.register_forward_pre_hook(self._pre))
            self.handles.append(m.register_forward_hook(self._post))

    def _pre(self, m, _inp):
        self._t0[id(m)] = time.perf_counter()

    def _post(self, m, _inp, _out):
        self.total += time.perf_counter() - self._t0.pop(id(m))

    def reset(self) -> None:
        self.total = 0.0


def set_impl(model, impl: str) -> None:
    for m in model.modules():
        if isinstance(m, AdaptiveConv2d):
            m.impl = impl


def stats(xs: list[float]) -> dict:
    return {"median_ms": 1000 * statistics.median(xs), "min_ms": 1000 * min(xs), "max_ms": 1000 * max(xs),
            "spread_ms": 1000 * (max(xs) - min(xs)), "runs": len(xs)}


def bench_forward(model, size: int, impls: list[str], runs: int, warmup: int) -> dict:
    x = torch.randn(1, 3, size, size)
    adaptive = Timer([m for m in model.modules() if isinstance(m, AdaptiveConv2d)])
    times = {i: [] for i in impls}
    shares = {i: [] for i in impls}
    with torch.inference_mode():
        for impl in impls:
            set_impl(model, impl)
            for _ in range(warmup):
                model(x)
        for _ in range(runs):
            for impl in impls:
                set_impl(model, impl)
                adaptive.reset()
                t0 = time.perf_counter()
                model(x)
                dt = time.perf_counter() - t0
                times[impl].append(dt)
                shares[impl].append(adaptive.total / dt)
    set_impl(model, impls[0])
    return {impl: {**stats(times[impl]), "adaptive_conv_share": statistics.median(shares[impl])} for impl in impls}


def bench_postprocess(model, cfg, runs: int, warmup: int) -> dict:
    """predict() on one 480x640 image with flip test; post-processing = total - network time."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():   # random weights; heads biased so the center map proposes MAX_NUM_PEOPLE people, each a
        # template pose (offset bias) around its center
        model.heatmap_head.final.bias.copy_(0.3 + 0.1 * torch.rand(model.num_keypoints + 1, generator=gen))
        model.heatmap_head.final.weight.normal_(std=1.0, generator=gen)
        model.offset_head.final.bias.copy_(20 * torch.rand(2 * model.num_keypoints, generator=gen) - 10)
    net = PredictOKSNet(74 if model.num_keypoints == 17 else 59, cfg.model.rescore_hidden)
    net.reset_parameters()
    model.rescorer = PoseRescorer(net)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    tf = get_method("dekr").transform(cfg, False)
    raw = {"image": image, "image_id": 1, "file_name": "synthetic", "sample_index": 0, "orig_size": (480, 640),
           "keypoints": np.zeros((0, model.num_keypoints, 3)), "boxes": np.zeros((0, 4))}
    network = Timer([model])
    totals, nets, people = [], [], []
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        batch = collate([tf(dict(raw))], model.size_divisibility)      # resize + normalise (part of the pipeline)
        network.reset()
        res = model.predict(batch, cfg.test)[0]
        dt = time.perf_counter() - t0
        if i >= warmup:
            totals.append(dt)
            nets.append(network.total)
            people.append(len(res))
    post = [t - n for t, n in zip(totals, nets)]
    return {"input": list(batch["images"].shape[-2:]), "people": int(statistics.median(people)),
            "total": stats(totals), "network": stats(nets), "postprocess": stats(post),
            "postprocess_share_of_forward": statistics.median(p / n for p, n in zip(post, nets))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "configs/dekr/dekr_hrnet_w32_coco_512.yaml"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--compare", action="store_true", help="also time the official deform_conv2d formulation")
    ap.add_argument("--skip-post", action="store_true", help="skip the post-processing measurement")
    ap.add_argument("--json", default="", help="write the results here")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = load_config(args.config, ["runtime.adaptive_conv_impl=grid_sample"])
    model = build_model(cfg).eval()
    out: dict = {"config": args.config, "threads": torch.get_num_threads(), "input": [args.size, args.size],
                 "params": sum(p.numel() for p in model.parameters())}
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, args.size, args.size))
    out["gmacs"] = counter.get_total_flops() / 2e9
    out["gmacs_by_op"] = {str(op).split(".")[-1]: n / 2e9 for op, n in counter.get_flop_counts()["Global"].items()}
    impls = ["grid_sample", "deform_conv2d"] if args.compare else ["grid_sample"]
    out["forward"] = bench_forward(model, args.size, impls, args.runs, args.warmup)
    if not args.skip_post:
        out["predict"] = bench_postprocess(model, cfg, max(3, args.runs // 2), 1)
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"DEKR {Path(args.config).stem}: {out['params']:,} parameters, {out['gmacs']:.3f} GMACs at "
          f"{args.size}x{args.size} (conv + matmul MACs; split {', '.join(f'{k} {v:.3f}' for k, v in out['gmacs_by_op'].items())})")
    print(f"threads {out['threads']}")
    for impl, r in out["forward"].items():
        print(f"  forward [{impl:13s}] median {r['median_ms']:7.1f} ms  (min {r['min_ms']:.1f}, max {r['max_ms']:.1f}, "
              f"{r['runs']} runs)  adaptive conv {100 * r['adaptive_conv_share']:.1f}% of forward")
    if args.compare:
        f = out["forward"]
        print(f"  grid_sample / deform_conv2d forward time: {f['grid_sample']['median_ms'] / f['deform_conv2d']['median_ms']:.2f}")
    if "predict" in out:
        p = out["predict"]
        print(f"  predict (480x640 -> {p['input'][0]}x{p['input'][1]}, flip, {p['people']} people): total "
              f"{p['total']['median_ms']:.1f} ms, network {p['network']['median_ms']:.1f} ms, post-processing "
              f"{p['postprocess']['median_ms']:.1f} ms = {100 * p['postprocess_share_of_forward']:.1f}% of forward")
    print(f"  peak RSS {out['peak_rss_mib']:.0f} MiB")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
