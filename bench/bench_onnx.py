"""ONNX Runtime vs PyTorch on CPU, per method: network latency and end-to-end ``Predictor`` latency.

For each method (default: the paper configs below; ``--tiny`` the small synthetic configs for a quick check) on
random weights:
  1. export the eval network with ``regpose export``'s code (dynamic axes), timing the export;
  2. network forward on a real COCO picture (whole-image methods: the method's test input of
     $REGPOSE_SHARED (or ../shared)/data/real/coco/000000000785.jpg; top-down: its detected people's crops at each ``--batch-sizes``),
     PyTorch (``inference_mode``) and ONNX Runtime (all graph optimisations) with the same thread count, timed in
     interleaved rounds (torch, onnx, torch, onnx, ...) so load drift hits both alike: median and p10 / p90 over
     ``--runs`` after ``--warmup``; the max abs output difference is reported as a sanity check;
  3. ``Predictor`` on the same picture (transform + network + the method's decoding / NMS + finalize) with each
     backend (top-down: boxes from the real detections file), same protocol.

    .venv/bin/python -m bench.bench_onnx --threads 2 --json-out runs/bench_onnx.json
    .venv/bin/python -m bench.bench_onnx --tiny --runs 5                 # quick check of the script itself
    .venv/bin/python -m bench.bench_onnx --methods dekr --configs configs/dekr/dekr_hrnet_w48_coco_640.yaml

Random weights: the decoded people are meaningless, the timings are not (QueryPose's max abs diff is large here
because a randomly initialised QueryPose regresses boxes thousands of pixels wide and its keypoint chain amplifies
fp32 rounding; with trained or the reference weights it is ~1e-4 px, see tests/inference/test_onnx.py).
Numbers are only meaningful on a quiet machine. Exports of the full models are large (QueryPose R50: ~1.3 GB) and
go to a temporary folder unless ``--keep DIR``.
"""
from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from bench._common import REPO, add_timing_args, interleaved, machine, parser, set_threads, shared_dir, write_json
from regpose.config import load_config
from regpose.data.collate import collate
from regpose.data.datasets import load_detections, read_image
from regpose.inference.export import describe_outputs, export_onnx, flatten_outputs, network_input_names
from regpose.inference.onnx_backend import create_session
from regpose.inference.predictor import Predictor
from regpose.inference.runner import PoseRunner
from regpose.models import build_model
from regpose.models.registry import get_method

PAPER = {
    "querypose": "configs/querypose/querypose_r50_coco.yaml",
    "dekr": "configs/dekr/dekr_hrnet_w32_coco_512.yaml",
    "directpose": "configs/directpose/directpose_r50_coco.yaml",
    "poseur": "configs/poseur/poseur_r50_coco_256x192.yaml",
    "rle": "configs/rle/rle_r50_coco_256x192.yaml",
    "tfpose": "configs/tfpose/tfpose_r50_coco_256x192.yaml",
}
TINY = {
    "querypose": "configs/querypose/querypose_r18_synthetic.yaml",
    "dekr": "configs/dekr/dekr_hrnet_tiny_synthetic.yaml",
    "directpose": "configs/directpose/directpose_r18_synthetic.yaml",
    "poseur": "configs/poseur/poseur_tiny_synthetic.yaml",
    "rle": "configs/rle/rle_tiny_synthetic.yaml",
    "tfpose": "configs/tfpose/tfpose_tiny_synthetic.yaml",
}


def network_inputs(cfg, model, image: np.ndarray, dets: np.ndarray, batch: int) -> dict:
    """The method's real network input for the picture (top-down: ``batch`` crops of its detections)."""
    samples = PoseRunner(model, cfg).samples(image, 0, "", dets)     # top-down: one crop per detection
    if get_method(cfg.method).family == "topdown":
        b = collate([samples[i % len(samples)] for i in range(batch)])
    else:
        b = collate(samples, model.size_divisibility)
    inputs = {"images": b["images"]}
    if "image_sizes" in network_input_names(model.export_module()):
        inputs["image_sizes"] = torch.tensor([list(m["input_hw"]) for m in b["metas"]])
    return inputs


def bench_method(method: str, config: str, args, image_path: Path, dets_all: dict, workdir: Path) -> dict:
    cfg = load_config(config)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    params = sum(p.numel() for p in model.parameters())
    image = read_image(image_path)
    image_id = int(image_path.stem)
    dets = dets_all.get(image_id, np.zeros((0, 5)))
    onnx_path = workdir / f"{method}.onnx"
    t = time.perf_counter()
    exported = export_onnx(model, cfg, onnx_path, dynamic=True, verify=False)
    export_s = time.perf_counter() - t
    session = create_session(onnx_path, "cpu", args.threads)
    topdown = get_method(cfg.method).family == "topdown"
    row = {"method": method, "config": config, "params": params, "export_s": export_s,
           "onnx_mb": onnx_path.stat().st_size / 1e6, "forward": [], "predict": None}

    for batch in (args.batch_sizes if topdown else [1]):
        inputs = network_inputs(cfg, model, image, dets, batch)
        feeds = {k: v.numpy() for k, v in inputs.items()}
        extras = {k: v for k, v in inputs.items() if k != "images"}

        def torch_forward():
            with torch.inference_mode():
                return model(inputs["images"], **extras)

        def onnx_forward():
            return session.run(None, feeds)

        out = torch_forward()
        ref = flatten_outputs(out, describe_outputs(out))
        diff = max(float(np.abs(r.numpy() - o).max()) for r, o in zip(ref, onnx_forward()) if r.numel())
        timing = interleaved({"torch": torch_forward, "onnx": onnx_forward}, runs=args.runs, warmup=args.warmup)
        row["forward"].append({"input": list(inputs["images"].shape), "torch": timing["torch"],
                               "onnx": timing["onnx"], "max_abs_diff": diff,
                               "speedup": timing["torch"]["median_ms"] / timing["onnx"]["median_ms"]})
        print(f"  {method} forward {tuple(inputs['images'].shape)}: torch {timing['torch']['median_ms']:.1f} ms, "
              f"onnx {timing['onnx']['median_ms']:.1f} ms (max abs diff {diff:.1e})", flush=True)

    if not args.no_predict:
        kw = {"boxes": dets_all_path(args)} if topdown else {}
        preds = {"torch": Predictor(cfg, None, "cpu", **kw), "onnx": Predictor(cfg, onnx_path, "cpu", **kw)}
        preds["torch"].model.load_state_dict(model.state_dict())
        timing = interleaved({k: (lambda p=p: p(image, image_id=image_id)) for k, p in preds.items()},
                             runs=max(3, args.runs // 2), warmup=1)
        row["predict"] = {"people": len(dets) if topdown else None, "torch": timing["torch"], "onnx": timing["onnx"],
                          "speedup": timing["torch"]["median_ms"] / timing["onnx"]["median_ms"]}
        print(f"  {method} predict: torch {timing['torch']['median_ms']:.1f} ms, "
              f"onnx {timing['onnx']['median_ms']:.1f} ms", flush=True)
    del exported
    if not args.keep:
        onnx_path.unlink(missing_ok=True)
    return row


def dets_all_path(args) -> str:
    return str(shared_dir() / "data" / "real" / "coco" / "test_coco_det_AP_H_56.json")


def format_table(rows: list[dict]) -> str:
    lines = [f"{'method':<11} {'input':<20} {'torch ms':>9} {'onnx ms':>9} {'x':>5}  {'predict torch':>13} "
             f"{'predict onnx':>12} {'x':>5}  {'max diff':>8}"]
    for r in rows:
        for i, f in enumerate(r["forward"]):
            p = r["predict"] if i == 0 and r["predict"] else None
            pt = f"{p['torch']['median_ms']:13.1f} {p['onnx']['median_ms']:12.1f} {p['speedup']:5.2f}" if p \
                else f"{'':13} {'':12} {'':5}"
            lines.append(f"{r['method']:<11} {'x'.join(map(str, f['input'])):<20} {f['torch']['median_ms']:9.1f} "
                         f"{f['onnx']['median_ms']:9.1f} {f['speedup']:5.2f}  {pt}  {f['max_abs_diff']:8.1e}")
    return "\n".join(lines)


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--methods", nargs="+", default=list(PAPER), choices=list(PAPER))
    ap.add_argument("--configs", nargs="+", help="one config per --methods entry (default: the paper configs)")
    ap.add_argument("--tiny", action="store_true", help="the small synthetic configs (a quick check)")
    add_timing_args(ap, runs=10, warmup=2)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32], help="top-down crops per forward")
    ap.add_argument("--no-predict", action="store_true", help="network latency only")
    ap.add_argument("--keep", help="keep the exported models in this folder")
    ap.add_argument("--json-out")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    set_threads(args.threads)
    configs = args.configs or [(TINY if args.tiny else PAPER)[m] for m in args.methods]
    if len(configs) != len(args.methods):
        raise SystemExit("--configs needs one config per --methods entry")
    coco = shared_dir() / "data" / "real" / "coco"
    image = coco / "000000000785.jpg"
    dets = load_detections(coco / "test_coco_det_AP_H_56.json")
    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="regpose_bench_onnx_"))
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for method, config in zip(args.methods, configs):
        print(f"{method}: {config}", flush=True)
        rows.append(bench_method(method, str(REPO / config) if not Path(config).is_file() else config, args,
                                 image, dets, workdir))
    print()
    print(format_table(rows))
    report = {**machine(), "onnxruntime": onnxruntime.__version__, "image": str(image), "rows": rows}
    if args.json_out:
        write_json(args.json_out, report)
    if not args.keep:
        try:
            workdir.rmdir()
        except OSError:
            pass


if __name__ == "__main__":
    main()
