"""DEKR speed on CPU: network forward (W32 at 512x512 by default), the adaptive convolution's share of it, MACs,
and the post-processing cost of the official single-image inference.

    .venv/bin/python -m bench.bench_dekr_speed [--config configs/dekr/dekr_hrnet_w32_coco_512.yaml]
        [--threads 2] [--runs 7] [--warmup 2] [--size 512] [--compare] [--official DEKR_CHECKOUT] [--json out.json]

* forward: ``torch.inference_mode()``, batch 1, median / min / max over ``--runs`` after ``--warmup``;
  ``--compare`` also times the official ``deform_conv2d`` formulation of the adaptive convolution in the same
  process (runs interleaved, so machine noise hits both alike);
  ``--official DEKR_CHECKOUT`` also times the official network (``lib/models/hrnet_dekr.py`` of a checkout of
  github.com/HRNet/DEKR, imported from there, nothing of it lives in this repository) in the same process,
  interleaved with ours: the official model is built from its experiment yaml with random weights, ours from the
  same yaml with those weights converted (``regpose.compat.dekr.build_from_official``), and both outputs are
  checked to agree before anything is timed, so the ratio compares two implementations of one function;
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

import statistics
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench._common import (REPO, ModuleTimer, add_timing_args, format_ratio, interleaved, machine, parser,
                           peak_rss_mib, round_ratios, set_threads, summary, timed, write_json)
from regpose.config import load_config
from regpose.data.collate import collate
from regpose.models import build_model, get_method
from regpose.models.dekr import PoseRescorer, PredictOKSNet
from regpose.models.layers.adaptive_conv import AdaptiveConv2d


def set_impl(model, impl: str) -> None:
    for m in model.modules():
        if isinstance(m, AdaptiveConv2d):
            m.impl = impl


class _Node(dict):
    """Attribute access to a nested dict, as the official code reads its yacs config (``cfg.MODEL.SPEC``)."""

    def __getattr__(self, key):
        value = self[key]
        return _Node(value) if isinstance(value, dict) else value


def official_models(checkout: Path, config: str, size: int) -> tuple:
    """(official network, our network with its weights converted, max |output difference|) for the official
    experiment yaml ``config`` (relative to ``checkout``), both in eval mode, random official weights."""
    import importlib
    import sys

    import yaml

    from regpose.compat.dekr import build_from_official

    if not (checkout / config).is_file() or not (checkout / "lib/models/hrnet_dekr.py").is_file():
        raise SystemExit(f"--official {checkout}: expected a checkout of github.com/HRNet/DEKR holding "
                         f"lib/models/hrnet_dekr.py and {config}")
    cfg_json = yaml.safe_load((checkout / config).read_text())
    sys.path.insert(0, str(checkout / "lib"))
    official = importlib.import_module("models.hrnet_dekr").get_pose_net(_Node(cfg_json), is_train=False).eval()
    _, ours = build_from_official(cfg_json, official.state_dict())
    set_impl(ours, "grid_sample")
    x = torch.randn(1, 3, size, size)
    with torch.inference_mode():
        diff = max(float((a - b).abs().max()) for a, b in zip(official(x), ours(x)))
    return official, ours, diff


def bench_forward(model, size: int, impls: list[str], runs: int, warmup: int, official=None) -> dict:
    """Forward time of each adaptive-conv implementation and of the ``official`` network if given (interleaved
    rounds), and the adaptive convs' share."""
    x = torch.randn(1, 3, size, size)
    adaptive = ModuleTimer([m for m in model.modules() if isinstance(m, AdaptiveConv2d)])
    inside = {i: [] for i in impls}

    def forward(impl):
        set_impl(model, impl)
        adaptive.reset()
        model(x)
        inside[impl].append(adaptive.total)

    fns = {i: (lambda i=i: forward(i)) for i in impls}
    if official is not None:
        fns["official"] = lambda: official(x)
    with torch.inference_mode():
        times = interleaved(fns, runs=runs, warmup=warmup, progress=True)
    adaptive.remove()
    set_impl(model, impls[0])
    out = {i: {**times[i], "adaptive_conv_share": statistics.median(
        1000 * t / ms for t, ms in zip(inside[i][-runs:], times[i]["times_ms"]))} for i in impls}
    if official is not None:
        out["official"] = times["official"]
    return out


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
    input_hw = list(collate([tf(dict(raw))], model.size_divisibility)["images"].shape[-2:])
    network = ModuleTimer([model])
    nets, people = [], []

    def predict():
        batch = collate([tf(dict(raw))], model.size_divisibility)      # resize + normalise (part of the pipeline)
        network.reset()
        people.append(len(model.predict(batch, cfg.test)[0]))
        nets.append(network.total)

    total = timed(predict, runs=runs, warmup=warmup)
    network.remove()
    nets, people = nets[warmup:], people[warmup:]
    post = [t / 1000 - n for t, n in zip(total["times_ms"], nets)]
    return {"input": input_hw, "people": int(statistics.median(people)),
            "total": total, "network": summary(nets), "postprocess": summary(post),
            "postprocess_share_of_forward": statistics.median(p / n for p, n in zip(post, nets))}


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--config", default=str(REPO / "configs/dekr/dekr_hrnet_w32_coco_512.yaml"))
    add_timing_args(ap, runs=7, warmup=2)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--compare", action="store_true", help="also time the official deform_conv2d formulation")
    ap.add_argument("--official", type=Path, help="a checkout of github.com/HRNet/DEKR: also time its network, "
                    "interleaved with ours on the same weights")
    ap.add_argument("--official-config", default="experiments/coco/w32/w32_4x_reg03_bs10_512_adam_lr1e-3_coco_x140.yaml",
                    help="its experiment yaml, relative to the checkout (default: W32 COCO)")
    ap.add_argument("--skip-post", action="store_true", help="skip the post-processing measurement")
    ap.add_argument("--json", default="", help="write the results here")
    args = ap.parse_args()

    set_threads(args.threads)
    torch.manual_seed(0)
    cfg = load_config(args.config, ["runtime.adaptive_conv_impl=grid_sample"])
    official, agreement = None, {}
    if args.official:   # ours then runs the official yaml's network on the official model's weights
        official, model, diff = official_models(args.official, args.official_config, args.size)
        agreement = {"official_max_abs_diff": diff}
        print(f"official network from {args.official}: outputs agree with ours on its weights to {diff:.2e}")
    else:
        model = build_model(cfg).eval()
    out: dict = {"config": args.config, **machine(), "input": [args.size, args.size],
                 "params": sum(p.numel() for p in model.parameters()), **agreement}
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, args.size, args.size))
    out["gmacs"] = counter.get_total_flops() / 2e9
    out["gmacs_by_op"] = {str(op).split(".")[-1]: n / 2e9 for op, n in counter.get_flop_counts()["Global"].items()}
    impls = ["grid_sample", "deform_conv2d"] if args.compare else ["grid_sample"]
    out["forward"] = bench_forward(model, args.size, impls, args.runs, args.warmup, official)
    if not args.skip_post:
        out["predict"] = bench_postprocess(model, cfg, max(3, args.runs // 2), 1)
    out["peak_rss_mib"] = peak_rss_mib()

    print(f"DEKR {Path(args.config).stem}: {out['params']:,} parameters, {out['gmacs']:.3f} GMACs at "
          f"{args.size}x{args.size} (conv + matmul MACs; split {', '.join(f'{k} {v:.3f}' for k, v in out['gmacs_by_op'].items())})")
    print(f"threads {out['threads']}, {out['cpu']}")
    for impl in impls:
        r = out["forward"][impl]
        print(f"  forward [{impl:13s}] median {r['median_ms']:7.1f} ms  (min {r['min_ms']:.1f}, max {r['max_ms']:.1f}, "
              f"{r['runs']} runs)  adaptive conv {100 * r['adaptive_conv_share']:.1f}% of forward")
    f = out["forward"]
    if args.compare:
        print(f"  grid_sample / deform_conv2d forward time: {f['grid_sample']['median_ms'] / f['deform_conv2d']['median_ms']:.2f}")
    if official is not None:
        print(f"  forward [official     ] median {f['official']['median_ms']:7.1f} ms  (min {f['official']['min_ms']:.1f}, "
              f"max {f['official']['max_ms']:.1f})")
        out["vs_official"] = round_ratios(f["grid_sample"], f["official"])
        print(f"  regpose / official forward time: {format_ratio(out['vs_official'])}")
    if "predict" in out:
        p = out["predict"]
        print(f"  predict (480x640 -> {p['input'][0]}x{p['input'][1]}, flip, {p['people']} people): total "
              f"{p['total']['median_ms']:.1f} ms, network {p['network']['median_ms']:.1f} ms, post-processing "
              f"{p['postprocess']['median_ms']:.1f} ms = {100 * p['postprocess_share_of_forward']:.1f}% of forward")
    print(f"  peak RSS {out['peak_rss_mib']:.0f} MiB")
    if args.json:
        write_json(args.json, out)


if __name__ == "__main__":
    main()
