"""QueryPose CPU latency (issue 6, "What it must show" 3).

Times the whole prediction (network + post-processing to people in original pixels) of the R50 config at
800x1216, batch 1, 2 threads, for execution variants of the *same* model and weights, interleaved run by run
so they share the machine's conditions:

  official-like  plain NCHW convolutions everywhere (how the official detectron2 code executes)
  direct-cl      plain convolutions, backbone in channels-last memory, SPEGM BatchNorm folded (same numbers)
  default        the config as shipped: Winograd F(4x4, 3x3) keypoint-decoder convolutions with oneDNN GEMMs,
                 channels-last backbone, folded BatchNorm, keypoint chains decoded proposal-chunk-wise in
                 worker threads (same numbers up to fp32 rounding)
  default-omp    default, but the keypoint decoder parallelised by intra-op (OpenMP) threads instead
  fast-top20     default + ``model.fast_topk=20`` (optional mode, off by default): keypoints decoded only for
                 proposals that can reach the top 20 (COCO keeps 20 per image), exact for those 20

It also reports the output differences between variants (they must agree within rounding), the latency on an
image with 1 person vs 30 people (fixed query count, no NMS: must grow < 10%), a per-part breakdown of one run,
peak RSS, and the ratio to the official anchor (README_measurements.md: 20.9 s median, idle machine).

    .venv/bin/python -m bench.bench_querypose_speed [--config C] [--size 800 1216] [--threads 2] [--runs 3]
        [--warmup 1] [--variants official-like,direct-cl,default,fast-top20] [--weights W] [--out DIR]
        [--quick] [key=value ...]

``--quick`` runs a reduced model (2 stages, 20 proposals) at 512x768 to check the wiring in about a minute.
Wall times are only meaningful on an otherwise idle machine; CPU times are printed too.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from bench._common import (REPO, add_timing_args, interleaved, machine, parser, peak_rss_mib, set_threads, timed,
                           write_json)
from regpose.config import TestConfig, load_config
from regpose.data.synthetic import render_image
from regpose.checkpoint import load_model_weights
from regpose.models import build_model
from regpose.models.querypose.box_decoder import box_rois

OFFICIAL_MS = 20900.0    # official R50 (non-light), 800x1216, 2 threads, idle machine (README_measurements.md)
VARIANTS = {
    "official-like": {"conv_impl": "direct", "channels_last": False, "fast_topk": 0, "parallel_chunks": False},
    "direct-cl": {"conv_impl": "direct", "channels_last": True, "fast_topk": 0, "parallel_chunks": False},
    "default": {},
    "default-omp": {"parallel_chunks": False},
    "fast-top20": {"fast_topk": 20},
}


RUNTIME = ("conv_impl", "channels_last", "parallel_chunks")     # runtime options: attributes of the built model


def set_variant(model, base: dict, changes: dict) -> None:
    for k, v in {**base, **changes}.items():
        setattr(model if k in RUNTIME else model.cfg, k, v)


def scene(h: int, w: int, people: int, seed: int) -> np.ndarray:
    """An RGB scene with exactly ``people`` labelled people: synthetic one-person renders tiled on a grid."""
    rng = np.random.default_rng(seed)
    if people <= 1:
        img, _ = render_image(rng, size=(w, h), max_people=1)
        return img
    rows = int(np.floor(np.sqrt(people * h / w)))
    cols = int(np.ceil(people / rows))
    canvas = np.zeros((h, w, 3), np.uint8)
    ch, cw = h // rows, w // cols
    for i in range(people):
        tile, _ = render_image(rng, size=(max(cw, 32), max(ch, 32)), max_people=1)
        r, c = divmod(i, cols)
        canvas[r * ch:(r + 1) * ch, c * cw:(c + 1) * cw] = cv2.resize(tile, (cw, ch))
    return canvas


def make_batch(model, img: np.ndarray) -> dict:
    h, w = img.shape[:2]
    mean = torch.tensor(model.cfg.pixel_mean).view(3, 1, 1)
    std = torch.tensor(model.cfg.pixel_std).view(3, 1, 1)
    x = (torch.from_numpy(img).permute(2, 0, 1).float() - mean) / std
    ph, pw = -(-h // 32) * 32, -(-w // 32) * 32
    images = torch.zeros(1, 3, ph, pw)
    images[0, :, :h, :w] = x
    meta = {"image_id": 0, "sample_index": 0, "file_name": "scene", "orig_size": (h, w), "input_hw": (h, w),
            "inverse": np.array([[1.0, 0, 0], [0, 1.0, 0]])}
    return {"images": images, "metas": [meta]}


def breakdown(model, batch) -> dict:
    """Milliseconds spent in the backbone + neck, box stages, keypoint stages and the rest (one run)."""
    # keypoint stages run in worker threads: time the whole keypoint phase (wall), not the sum of its stages
    acc = {"backbone+neck": 0.0, "box decoder": 0.0, "keypoint decoder": 0.0}
    attrs = {"backbone+neck": "features", "box decoder": "box_stage", "keypoint decoder": "_keypoint_chains"}
    orig = {name: getattr(model, attr) for name, attr in attrs.items()}

    def wrap(name, fn):
        def inner(*a, **k):
            t0 = time.perf_counter()
            out = fn(*a, **k)
            acc[name] += (time.perf_counter() - t0) * 1000
            return out
        return inner

    for name, fn in orig.items():
        setattr(model, attrs[name], wrap(name, fn))
    try:
        total = timed(lambda: model.predict(batch, TestConfig()), runs=1, warmup=0)["median_ms"]
    finally:
        for name in orig:
            delattr(model, attrs[name])
    acc["rest (post-processing, glue)"] = total - sum(acc.values())
    acc["total"] = total
    return {k: round(v, 1) for k, v in acc.items()}


def main(argv=None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--config", default=str(REPO / "configs" / "querypose" / "querypose_r50_coco.yaml"))
    ap.add_argument("--size", type=int, nargs=2, default=[800, 1216], metavar=("H", "W"))
    add_timing_args(ap, runs=3, warmup=1)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--weights", default="", help="optional checkpoint (ours or converted); random init otherwise")
    ap.add_argument("--out", default=str(REPO / "runs" / "bench_querypose_speed"))
    ap.add_argument("--quick", action="store_true", help="reduced model and input: wiring check only")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)

    set_threads(args.threads)
    overrides = list(args.overrides)
    h, w = args.size
    if args.quick:
        overrides += ["model.num_stages=2", "model.num_proposals=20"]
        h, w = 512, 768
        args.runs, args.warmup = min(args.runs, 2), min(args.warmup, 1)
    cfg = load_config(args.config, overrides)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    if args.weights:
        load_model_weights(model, args.weights, strict=False)
    base = {k: getattr(model if k in RUNTIME else cfg.model, k) for k in RUNTIME + ("fast_topk",)}
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v not in VARIANTS:
            ap.error(f"unknown variant {v!r}; choose from {list(VARIANTS)}")

    imgs = {1: scene(h, w, 1, seed=1), 30: scene(h, w, 30, seed=2)}
    batches = {k: make_batch(model, im) for k, im in imgs.items()}
    env = machine()
    print(f"QueryPose {Path(args.config).name} {'(quick) ' if args.quick else ''}at {h}x{w}, "
          f"{env['threads']} threads, torch {env['torch']}, {env['cpu']}", flush=True)

    # ---- agreement between variants (network outputs on the 30-person scene)
    outs = {}
    with torch.inference_mode():
        for v in variants:
            set_variant(model, base, VARIANTS[v])
            sizes = torch.tensor([[h, w]])
            outs[v] = model(batches[30]["images"], image_sizes=sizes)
    agree = {}
    ref = outs.get("official-like") or outs[variants[0]]
    for v, o in outs.items():
        if "proposal_index" in o:      # fast mode: compare its people with the same proposals of the reference
            idx = o["proposal_index"][0]
            diff = {k: float((o[k][0] - ref[k][0][idx]).abs().max()) for k in ("scores", "keypoints", "boxes")}
        else:
            diff = {k: float((o[k] - ref[k]).abs().max()) for k in ("scores", "keypoints", "boxes")}
        agree[v] = diff
        print(f"  max |{v} - {variants[0]}|: scores {diff['scores']:.2e}, keypoints {diff['keypoints']:.2e} px, "
              f"boxes {diff['boxes']:.2e} px", flush=True)

    # ---- Winograd vs plain convolutions on the same RoI features (what the Winograd path changes). Final
    # outputs of a randomly initialised decoder amplify any rounding difference chaotically, so the
    # end-to-end agreement above is only meaningful with trained weights (--weights).
    with torch.inference_mode():
        set_variant(model, base, {})
        feats = model.features(batches[30]["images"])
        boxes = model.initial_boxes(torch.tensor([[h, w]]))
        query = model.init_proposal_features.weight[None]
        _, boxes, _ = model.box_stage(0, feats, boxes, query)
        roi = model.kpt_pooler([feats[0]], box_rois(boxes))
        stage = model.kpt_stages[0]
        u_w = stage.roi_convs(roi)
        impl, stage.conv_impl = stage.conv_impl, "direct"
        u_d = stage.roi_convs(roi)
        stage.conv_impl = impl
        tower_err = float((u_w - u_d).abs().max() / u_d.abs().max().clamp(min=1e-12))
    print(f"  keypoint-decoder conv tower, Winograd vs direct: max |diff| / max |value| = {tower_err:.2e}", flush=True)

    # ---- latency: variants interleaved run by run
    def predict(variant):
        set_variant(model, base, VARIANTS[variant])
        model.predict(batches[1], TestConfig())

    with torch.inference_mode():
        times = interleaved({v: (lambda v=v: predict(v)) for v in variants}, runs=args.runs, warmup=args.warmup,
                            progress=True)
    summary = {}
    for v, t in times.items():
        summary[v] = {"median_ms": round(t["median_ms"], 1), "min_ms": round(t["min_ms"], 1),
                      "max_ms": round(t["max_ms"], 1), "cpu_ms_median": round(t["cpu_median_ms"], 1),
                      "vs_official_anchor": round(t["median_ms"] / OFFICIAL_MS, 3)}

    # ---- 1 vs 30 people (default variant)
    with torch.inference_mode():
        set_variant(model, base, {})
        people = interleaved({n: (lambda n=n: model.predict(batches[n], TestConfig())) for n in (1, 30)},
                             runs=max(args.runs, 2), warmup=1)
        m1, m30 = people[1]["median_ms"], people[30]["median_ms"]
        scaling = {"1_person_ms": round(m1, 1), "30_people_ms": round(m30, 1), "growth": round(m30 / m1 - 1, 4)}
        bd = breakdown(model, batches[1])

    peak_mb = peak_rss_mib()
    print(f"\n{'variant':<14} {'median ms':>10} {'min':>8} {'max':>8} {'cpu ms':>8} {'/ official 20.9 s':>18}")
    for v, s in summary.items():
        print(f"{v:<14} {s['median_ms']:>10.0f} {s['min_ms']:>8.0f} {s['max_ms']:>8.0f} {s['cpu_ms_median']:>8.0f} "
              f"{s['vs_official_anchor']:>18.3f}")
    if "official-like" in summary:
        for v in variants:
            print(f"  {v}: {summary[v]['median_ms'] / summary['official-like']['median_ms']:.3f} x official-like "
                  f"(same process)")
    print(f"1 person {scaling['1_person_ms']:.0f} ms, 30 people {scaling['30_people_ms']:.0f} ms: "
          f"{100 * scaling['growth']:+.1f}% (must be < +10%)")
    print("breakdown (default, one run, ms):", bd)
    print(f"peak RSS {peak_mb:.0f} MB")
    out = Path(args.out) / ("quick" if args.quick else "full")
    result = {"config": str(Path(args.config).resolve().relative_to(REPO)) if Path(args.config).resolve().is_relative_to(REPO)
              else args.config, "size": [h, w], **env, "runs": args.runs, "quick": args.quick,
              "official_anchor_ms": OFFICIAL_MS, "variants": summary,
              "agreement_vs_first": agree, "tower_rel_err_winograd_vs_direct": tower_err, "people_scaling": scaling, "breakdown_ms": bd, "peak_rss_mb": round(peak_mb),
              "target_0.8x_met": bool(summary.get("default", {}).get("vs_official_anchor", 9) <= 0.8),
              "scaling_under_10pct": bool(scaling["growth"] < 0.10)}
    write_json(out / "results.json", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
