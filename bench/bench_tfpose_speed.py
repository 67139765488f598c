"""TFPose CPU latency next to Poseur's, same backbone (ResNet-50) and input size (256x192 by default).

In one process, on random weights, network forward in eval mode under ``inference_mode``:
  * ``tfpose_ne6``   TFPose R-50, N_E = 6, N_D = 6 (paper: 9.2 GFLOPs, 71.0 AP)
  * ``tfpose_ne4``   TFPose R-50, N_E = 4, N_D = 6 (paper: 7.7 GFLOPs, 70.5 AP)
  * ``poseur``       Poseur R-50, 6 decoder layers (regpose's Poseur; paper: 4.6 GFLOPs, 75.4 AP)
for each batch size (default 1 and 32). Models are timed in interleaved rounds (A B C A B C ...) so a machine-load
drift hits all of them alike; medians over ``--runs`` rounds after ``--warmup``. Also reported: TFPose with each
deformable sampler (``gather`` = embedding_bag, the eager default; ``grid_sample`` = the export path), the split
backbone / input projection + encoder / decoder, the full ``predict`` with flip test at batch 1, GMACs (regpose
bench's counting) and parameters.

    .venv/bin/python -m bench.bench_tfpose_speed --threads 2 --out runs/bench_tfpose_speed.json
    .venv/bin/python -m bench.bench_tfpose_speed --input 384x288 --batch-sizes 1 8

Numbers are only meaningful on a quiet machine (another busy process makes 2-thread OpenMP runs stall).
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from bench._common import add_timing_args, interleaved, machine, parser, peak_rss_mib, set_threads, write_json
from regpose.data.keypoints import get_meta
from regpose.engine.bench import count_flops, count_parameters
from regpose.models.layers.deform_attn import MultiScaleDeformableAttention
from regpose.models.poseur import Poseur, PoseurConfig
from regpose.models.tfpose import TFPose, TFPoseConfig


def build_models(names: list[str]) -> dict[str, torch.nn.Module]:
    meta = get_meta("coco")
    makers = {
        "tfpose_ne6": lambda: TFPose(TFPoseConfig(num_encoder_layers=6), meta),
        "tfpose_ne4": lambda: TFPose(TFPoseConfig(num_encoder_layers=4), meta),
        "poseur": lambda: Poseur(PoseurConfig(), meta),
    }
    out = {}
    for n in names:
        torch.manual_seed(0)
        out[n] = makers[n]().eval()
    return out


def set_sampler(model: TFPose, sampler: str) -> None:
    for m in model.modules():
        if isinstance(m, MultiScaleDeformableAttention):
            m.sampler = sampler


def tfpose_split(model: TFPose, x: torch.Tensor, warmup: int, runs: int) -> dict:
    """Backbone, input projection + encoder, and decoder (last layer only, as in eval) separately."""
    feats = model.backbone(x)
    memory, shapes = model.encode(x)

    def encoder_only():
        projected = [proj(f) for proj, f in zip(model.input_proj, feats)]
        src = torch.cat([f.flatten(2).transpose(1, 2) for f in projected], 1)
        pos, refs = model._geometry(shapes, src.device, src.dtype)
        level_pos = torch.cat([model.level_embed[i].expand(h * w, -1) for i, (h, w) in enumerate(shapes)])
        pos = (pos + level_pos).unsqueeze(0)
        refs = refs.unsqueeze(0).expand(src.shape[0], -1, -1)
        for layer in model.encoder:
            src = layer(src, pos, refs, shapes)
        return src

    r = interleaved({"backbone": lambda: model.backbone(x), "input_proj+encoder": encoder_only,
                     "decoder": lambda: model.decode(memory, shapes, all_layers=False)}, runs=runs, warmup=warmup)
    return {k: v["median_ms"] for k, v in r.items()}


def main() -> None:
    ap = parser(__doc__)
    add_timing_args(ap, runs=7, warmup=2)
    ap.add_argument("--input", default="256x192", help="HxW of the crop (a multiple of 32)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--models", nargs="+", default=["tfpose_ne6", "tfpose_ne4", "poseur"])
    ap.add_argument("--out", default="runs/bench_tfpose_speed.json")
    args = ap.parse_args()

    set_threads(args.threads)
    h, w = (int(v) for v in args.input.lower().split("x"))
    models = build_models(args.models)
    report = {"input_hw": [h, w], **machine(), "models": {}, "runs": {}}
    with torch.inference_mode():
        for name, m in models.items():
            flops, _ = count_flops(m, torch.randn(1, 3, h, w))
            info = {"params": count_parameters(m), "gmacs": round(flops / 2e9, 3)}
            if isinstance(m, TFPose):
                info["gmacs_with_sampling"] = round((flops + m.extra_flops((h, w))["deformable_sampling"]) / 2e9, 3)
            report["models"][name] = info
            print(f"{name:<12} params {info['params']:>11,}  GMACs {info['gmacs']:.3f}"
                  + (f" (+ sampling {info['gmacs_with_sampling']:.3f})" if "gmacs_with_sampling" in info else ""),
                  flush=True)

        for bs in args.batch_sizes:
            x = torch.randn(bs, 3, h, w)
            runs = args.runs if bs <= 8 else max(3, args.runs // 2)
            warmup = args.warmup if bs <= 8 else 1
            res = interleaved({n: (lambda m=m: m(x)) for n, m in models.items()}, runs=runs, warmup=warmup)
            for n, r in res.items():
                report["runs"][f"bs{bs}_{n}"] = r
            line = "  ".join(f"{n} {r['median_ms']:.1f} ms" for n, r in res.items())
            print(f"batch {bs:>2}  forward median: {line}", flush=True)
            if "poseur" in res:
                for n in res:
                    if n != "poseur":
                        report["runs"][f"bs{bs}_{n}"]["ratio_vs_poseur"] = res[n]["median_ms"] / res["poseur"]["median_ms"]
            tf = next((m for m in models.values() if isinstance(m, TFPose)), None)
            if tf is not None:
                def forward(sampler):
                    set_sampler(tf, sampler)
                    tf(x)

                samplers = interleaved({s: (lambda s=s: forward(s)) for s in ("gather", "grid_sample")},
                                       runs=max(2, runs // 2))
                set_sampler(tf, "auto")                                         # the eval default (gather)
                report["runs"][f"bs{bs}_tfpose_samplers"] = samplers
                split = tfpose_split(tf, x, 1, max(2, runs // 2))
                report["runs"][f"bs{bs}_tfpose_split_ms"] = split
                print(f"batch {bs:>2}  {next(n for n, m in models.items() if m is tf)} samplers: "
                      + ", ".join(f"{s} {r['median_ms']:.1f} ms" for s, r in samplers.items())
                      + "; split: " + ", ".join(f"{k} {v:.1f} ms" for k, v in split.items()), flush=True)

        # full single-crop path: flip test + decoding to image pixels
        metas = [{"image_id": 0, "sample_index": 0, "inverse": np.array([[1.0, 0, 0], [0, 1.0, 0]]),
                  "box": [0, 0, w - 1, h - 1], "box_score": 1.0, "scale": [w / 200 * 1.25, h / 200 * 1.25]}]
        batch = {"images": torch.randn(1, 3, h, w), "metas": metas}
        test_cfg = SimpleNamespace(flip=True)
        res = interleaved({n: (lambda m=m: m.predict(batch, test_cfg)) for n, m in models.items()}, runs=args.runs,
                          warmup=args.warmup)
        for n, r in res.items():
            report["runs"][f"bs1_predict_flip_{n}"] = r
        print("batch  1  predict+flip median: " + "  ".join(f"{n} {r['median_ms']:.1f} ms" for n, r in res.items()),
              flush=True)
    report["peak_rss_mib"] = peak_rss_mib()
    write_json(args.out, report)


if __name__ == "__main__":
    main()
