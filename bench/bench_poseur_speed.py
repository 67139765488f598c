"""Poseur R50 6-dec 256x192 CPU latency: ours against the official formulation, side by side in one process.

Measures, in one process and on the same random weights:
  * ``ours``          - EMSDA with the one-call ``embedding_bag`` sampler (the default);
  * ``grid_sample``   - our EMSDA with one grid_sample per level over all heads (the ONNX export path);
  * ``official_like`` - the official computation order (mmcv's grid_sample reference as the official model runs on
    CPU): the memory repeated once per head, every head sampling all C channels of each level separately;
for batch 1 and 32 (network forward, eval, inference_mode), plus the split backbone / neck / head for ``ours`` and
the full ``predict`` (flip test + decoding) at batch 1. Medians over ``--runs`` after ``--warmup`` runs; the variants
are timed in interleaved rounds, and each variant's time is printed as a ratio to ``official_like`` of the same
rounds (speed is only ever compared within one run; the official code's own figures, measured in another run,
are not compared against).

    .venv/bin/python -m bench.bench_poseur_speed --threads 2 --out runs/bench_poseur_speed.json

Numbers are only meaningful on a quiet machine (another busy process makes 2-thread OpenMP runs stall).
"""
from __future__ import annotations

from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from bench._common import add_timing_args, format_ratio, interleaved, machine, parser, peak_rss_mib, round_ratios, \
    set_threads, timed, write_json
from regpose.data.keypoints import get_meta
from regpose.models.layers import deform_attn
from regpose.models.layers.deform_attn import MultiScaleDeformableAttention
from regpose.models.poseur import Poseur, PoseurConfig


def official_like_sample(value, spatial_shapes, locations, weights, sampler="auto", shared=None):
    """mmcv ``multi_scale_deformable_attn_pytorch`` as the official EMSDA feeds it: value (B, N, C) repeated per head
    to (B, N, M, C), per level reshaped to (B*M, C, H, W) and grid-sampled at that head's points."""
    B, N, G, D = value.shape
    _, Q, M, L, P, _ = locations.shape
    if G == 1:
        value = value.expand(B, N, M, D).contiguous()                  # the per-head copy of the memory
    grids = 2 * locations - 1
    per_level = []
    for lvl, (start, (h, w)) in enumerate(zip(deform_attn.level_start_index(spatial_shapes), spatial_shapes)):
        v = value[:, start:start + h * w].flatten(2).transpose(1, 2).reshape(B * M, D, h, w)
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)             # (B*M, Q, P, 2)
        per_level.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    s = torch.stack(per_level, dim=-2).flatten(-2)                          # (B*M, D, Q, L*P)
    a = weights.transpose(1, 2).reshape(B * M, 1, Q, L * P)
    return (s * a).sum(-1).view(B, M, D, Q).permute(0, 3, 1, 2)             # (B, Q, M, D)


@contextmanager
def sampler_variant(model: Poseur, variant: str):
    original = deform_attn.deformable_sample
    layers = [layer.cross_attn for layer in model.layers]
    saved = [a.sampler for a in layers]
    try:
        if variant == "official_like":
            deform_attn.deformable_sample = official_like_sample
        elif variant == "grid_sample":
            for a in layers:
                a.sampler = "grid_sample"
        yield
    finally:
        deform_attn.deformable_sample = original
        for a, s in zip(layers, saved):
            a.sampler = s


def split_times(model: Poseur, x: torch.Tensor, warmup: int, runs: int) -> dict:
    feats = model.backbone(x)
    neck = model.neck(feats)

    def head():
        memory, shapes, last = [], [], neck[-1]
        tokens = []
        for lvl, f in enumerate(neck):
            h, w = f.shape[-2:]
            shapes.append((int(h), int(w)))
            tokens.append((f + model._grid_pe(int(h), int(w), f) + model.level_embed[lvl].view(1, -1, 1, 1))
                          .flatten(2).transpose(1, 2))
        memory = torch.cat(tokens, 1)
        mu, _ = model.coarse_head(last)
        content, pos, ref = model.init_queries(mu, 1)
        return model.decode(content, pos, ref, memory, shapes, 1, all_layers=False)

    r = interleaved({"backbone": lambda: model.backbone(x), "neck": lambda: model.neck(feats), "head": head},
                    runs=runs, warmup=warmup)
    return {k: v["median_ms"] for k, v in r.items()}


def bench_attention(batch_sizes, warmup: int, runs: int) -> dict:
    """One EMSDA layer of the R50 model (C 256, 8 heads, 4 levels, 4 points, 17 queries, 4080 memory tokens): the
    three samplers on identical inputs (training-mode forward + backward for the two exact ones too)."""
    shapes = [(64, 48), (32, 24), (16, 12), (8, 6)]
    n = sum(h * w for h, w in shapes)
    out = {}
    for bs in batch_sizes:
        torch.manual_seed(0)
        attn = MultiScaleDeformableAttention(256, 8, 4, 4, mode="emsda")
        torch.nn.init.normal_(attn.sampling_offsets.weight, std=0.02)
        q, ref, mem = torch.randn(bs, 17, 256), torch.rand(bs, 17, 2), torch.randn(bs, n, 256)
        wrapper = SimpleNamespace(layers=[SimpleNamespace(cross_attn=attn)])

        def forward(variant):
            with sampler_variant(wrapper, variant), torch.inference_mode():
                attn(q, ref, mem, shapes)

        r = interleaved({v: (lambda v=v: forward(v)) for v in ("ours", "grid_sample", "official_like")},
                        runs=runs, warmup=warmup)
        for variant, t in r.items():
            out[f"bs{bs}_{variant}_ms"] = t["median_ms"]
            print(f"EMSDA layer  batch {bs:>2}  {variant:<14} {t['median_ms']:9.2f} ms", flush=True)
        qq, mm = q.clone().requires_grad_(), mem.clone().requires_grad_()

        def step(variant):
            with sampler_variant(wrapper, variant):
                attn.zero_grad()
                attn(qq, ref, mm, shapes).square().sum().backward()

        r = interleaved({v: (lambda v=v: step(v)) for v in ("ours", "grid_sample")}, runs=max(2, runs // 2))
        for variant, t in r.items():
            out[f"bs{bs}_{variant}_train_ms"] = t["median_ms"]
            print(f"EMSDA layer  batch {bs:>2}  {variant:<14} fwd+bwd {t['median_ms']:9.2f} ms", flush=True)
    return out


def main() -> None:
    ap = parser(__doc__)
    add_timing_args(ap, runs=5, warmup=2)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--variants", nargs="+", default=["ours", "grid_sample", "official_like"])
    ap.add_argument("--out", default="runs/bench_poseur_speed.json")
    ap.add_argument("--attention-only", action="store_true", help="only the one-layer EMSDA micro-benchmark")
    ap.add_argument("--skip-attention", action="store_true", help="skip the one-layer EMSDA micro-benchmark")
    ap.add_argument("--skip-split", action="store_true", help="skip the backbone / neck / head split and predict")
    args = ap.parse_args()

    set_threads(args.threads)
    torch.manual_seed(0)
    model = Poseur(PoseurConfig(), get_meta("coco")).eval()
    report = {"model": "Poseur R50 6-dec 256x192 (random init)", **machine(), "runs": {}}
    if not args.skip_attention:
        report["attention_layer"] = bench_attention(args.batch_sizes, args.warmup, args.runs)
    if args.attention_only:
        write_json(args.out, report)
        return
    with torch.inference_mode():
        for bs in args.batch_sizes:
            x = torch.randn(bs, 3, 256, 192)
            ref_out, diffs = None, {}
            for variant in args.variants:
                with sampler_variant(model, variant):
                    out = model(x)
                ref_out = out if ref_out is None else ref_out
                diffs[variant] = max(float((a - b).abs().max()) for a, b in zip(out, ref_out))

            def forward(variant):
                with sampler_variant(model, variant):
                    model(x)

            runs = args.runs if bs == 1 else max(2, args.runs // 2)
            res = interleaved({v: (lambda v=v: forward(v)) for v in args.variants}, runs=runs,
                              warmup=args.warmup if bs == 1 else 1)
            for variant, r in res.items():
                r["max_abs_diff_vs_ours"] = diff = diffs[variant]
                report["runs"][f"bs{bs}_{variant}"] = r
                print(f"batch {bs:>2}  {variant:<14} median {r['median_ms']:9.1f} ms  min {r['min_ms']:9.1f} ms"
                      f"  (max |diff| {diff:.1e})", flush=True)
            for variant in [v for v in res if v != "official_like"] if "official_like" in res else []:
                ratio = report["runs"][f"bs{bs}_{variant}"]["vs_official_like"] = round_ratios(
                    res[variant], res["official_like"])
                print(f"batch {bs:>2}  {variant} / official_like: {format_ratio(ratio)}", flush=True)
            if args.skip_split:
                continue
            split = split_times(model, x, 1, max(2, args.runs // 2))
            report["runs"][f"bs{bs}_split_ms"] = split
            print(f"batch {bs:>2}  split: " + ", ".join(f"{k} {v:.1f} ms" for k, v in split.items()), flush=True)
    # the full single-image path: flip test + decoding
    if not args.skip_split:
        metas = [{"image_id": 0, "sample_index": 0, "inverse": np.array([[1.0, 0, 0], [0, 1.0, 0]]),
                  "box": [0, 0, 191, 255], "box_score": 1.0, "scale": [1.2, 1.6]}]
        batch = {"images": torch.randn(1, 3, 256, 192), "metas": metas}
        with torch.inference_mode():
            r = timed(lambda: model.predict(batch, SimpleNamespace(flip=True)), runs=args.runs, warmup=args.warmup)
        report["runs"]["bs1_predict_flip"] = r
        print(f"batch  1  predict+flip    median {r['median_ms']:9.1f} ms", flush=True)
    report["peak_rss_mib"] = peak_rss_mib()
    write_json(args.out, report)


if __name__ == "__main__":
    main()
