"""``regpose bench``: parameters, FLOPs, forward latency, throughput and peak memory of a config's model.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` on one forward pass at batch 1. It counts matrix
products and convolutions (incl. transposed) and attention kernels at 2 FLOPs per multiply-accumulate; we add
torchvision's ``deform_conv2d`` (2 x its MACs, so DEKR's official op is counted like the paper's summary does)
and ``roi_align`` (4 samples per bin x 4 MACs, like the QueryPose measurement). Element-wise ops, norms,
pooling, interpolation and ``grid_sample`` are not counted. GMACs = FLOPs / 2.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..checkpoint import load_model_weights
from ..models import build_model

__all__ = ["count_parameters", "count_flops", "measure_latency", "run_bench", "format_bench"]


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _deform_conv2d_flop(input_shape, weight_shape, offset_shape, mask_shape, bias_shape, *args, out_shape=None,
                        **kwargs) -> int:
    n, _, ho, wo = out_shape
    cout, cin_per_group, kh, kw = weight_shape
    return 2 * n * cout * cin_per_group * kh * kw * ho * wo


def _roi_align_flop(input_shape, rois_shape, *args, out_shape=None, **kwargs) -> int:
    k, c, ph, pw = out_shape
    return 2 * k * c * ph * pw * 4 * 4


def _custom_mapping() -> dict:
    mapping = {}
    try:
        import torchvision  # noqa: F401 - importing registers the torchvision:: ops

        mapping[torch.ops.torchvision.deform_conv2d.default] = _deform_conv2d_flop
        mapping[torch.ops.torchvision.roi_align.default] = _roi_align_flop
    except (ImportError, AttributeError):  # pragma: no cover
        pass
    return mapping


@torch.no_grad()
def count_flops(fn, *args) -> tuple[int, dict[str, int]]:
    """Total FLOPs of ``fn(*args)`` and the split by operator."""
    with FlopCounterMode(display=False, custom_mapping=_custom_mapping()) as counter:
        fn(*args)
    by_op: dict[str, int] = {}
    for op, n in counter.get_flop_counts().get("Global", {}).items():
        name = str(op)                 # e.g. 'aten.convolution', 'torchvision.deform_conv2d'
        by_op[name] = by_op.get(name, 0) + int(n)
    return int(counter.get_total_flops()), by_op


def _peak_rss_mib() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024.0 if platform.system() != "Darwin" else r / 2**20


@torch.inference_mode()
def measure_latency(fn, warmup: int = 2, runs: int = 10, sync=None) -> dict:
    """Wall-clock of ``fn()`` over ``runs`` runs after ``warmup``: median, spread, min, process CPU time."""
    for _ in range(warmup):
        fn()
    times, cpu = [], []
    for _ in range(runs):
        if sync:
            sync()
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        if sync:
            sync()
        times.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return {"median_ms": statistics.median(times), "p25_ms": q[0], "p75_ms": q[2], "min_ms": min(times),
            "max_ms": max(times), "cpu_median_ms": statistics.median(cpu), "runs_ms": [round(t, 2) for t in times]}


@dataclass
class BenchResult:
    config: str
    method: str
    input_hw: tuple[int, int]
    params: int
    gflops: float
    gmacs: float
    flops_by_op: dict
    threads: int
    device: str
    extra_flops: dict = field(default_factory=dict)  # work flop_counter cannot see, from model.extra_flops()
    latency: dict = field(default_factory=dict)   # batch size -> latency dict (+ throughput)
    peak_rss_mib: float = 0.0
    peak_cuda_mib: float = 0.0
    torch: str = torch.__version__


def run_bench(cfg, input_hw: tuple[int, int] | None = None, batch_sizes=(1,), warmup: int = 2, runs: int = 10,
              threads: int | None = None, device: str = "cpu", weights: str = "", mode: str = "forward",
              flops: bool = True) -> BenchResult:
    """Build the model of ``cfg`` and measure it. ``mode``: ``forward`` (network only, eval mode) or
    ``predict`` (network + the method's decoding/post-processing via ``predict``)."""
    if threads:
        torch.set_num_threads(threads)
    model = build_model(cfg)
    if weights:
        load_model_weights(model, weights)
    dev = torch.device(device)
    model = model.to(dev).eval()
    w, h = cfg.data.input_size
    if input_hw is None:
        input_hw = (int(h), int(w))
    result = BenchResult(config=cfg.name, method=cfg.method, input_hw=tuple(input_hw), params=count_parameters(model),
                         gflops=0.0, gmacs=0.0, flops_by_op={}, threads=torch.get_num_threads(), device=str(dev))

    def make_batch(b: int):
        g = torch.Generator().manual_seed(0)
        images = torch.randn(b, 3, *input_hw, generator=g).to(dev)
        if mode == "forward":
            return lambda: model(images)
        hh, ww = input_hw
        metas = [{"image_id": i, "sample_index": i, "file_name": "", "orig_size": (hh, ww), "input_hw": (hh, ww),
                  "inverse": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], "box": [0.0, 0.0, ww - 1.0, hh - 1.0],
                  "box_score": 1.0, "center": [ww / 2, hh / 2], "scale": [ww / 200 * 1.25, hh / 200 * 1.25]}
                 for i in range(b)]
        batch = {"images": images, "targets": [{} for _ in range(b)], "metas": metas}
        return lambda: model.predict(batch, cfg.test)

    if flops:
        total, by_op = count_flops(make_batch(1))
        result.gflops, result.gmacs, result.flops_by_op = total / 1e9, total / 2e9, by_op
        if hasattr(model, "extra_flops"):  # e.g. deformable sampling through embedding_bag / grid_sample
            result.extra_flops = {k: int(v) for k, v in model.extra_flops(tuple(input_hw), 1).items()}
    sync = torch.cuda.synchronize if dev.type == "cuda" else None
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for b in batch_sizes:
        lat = measure_latency(make_batch(b), warmup=warmup, runs=runs, sync=sync)
        lat["throughput_per_s"] = b / (lat["median_ms"] / 1000)
        result.latency[int(b)] = lat
    result.peak_rss_mib = _peak_rss_mib()
    if dev.type == "cuda":
        result.peak_cuda_mib = torch.cuda.max_memory_allocated() / 2**20
    return result


def format_bench(r: BenchResult) -> str:
    lines = [f"{r.config} ({r.method})  input {r.input_hw[0]}x{r.input_hw[1]}  device {r.device}  "
             f"threads {r.threads}  torch {r.torch}",
             f"params {r.params:,}  GFLOPs {r.gflops:.3f}  GMACs {r.gmacs:.3f} (batch 1; conv/matmul/attention "
             f"+ deform_conv2d + roi_align; see regpose.engine.bench)"]
    if r.extra_flops:
        extra = sum(r.extra_flops.values())
        parts = ", ".join(f"{k} {v / 2e9:.3f}" for k, v in r.extra_flops.items())
        lines.append(f"not seen by flop_counter: {parts} GMACs -> total {r.gmacs + extra / 2e9:.3f} GMACs")
    lines.append(f"{'batch':>5} {'median ms':>10} {'p25':>9} {'p75':>9} {'min':>9} {'cpu ms':>9} {'img/s':>8}")
    for b, lat in r.latency.items():
        lines.append(f"{b:>5} {lat['median_ms']:>10.1f} {lat['p25_ms']:>9.1f} {lat['p75_ms']:>9.1f} "
                     f"{lat['min_ms']:>9.1f} {lat['cpu_median_ms']:>9.1f} {lat['throughput_per_s']:>8.2f}")
    lines.append(f"peak RSS {r.peak_rss_mib:.0f} MiB" + (f"  peak CUDA {r.peak_cuda_mib:.0f} MiB"
                                                          if r.peak_cuda_mib else ""))
    return "\n".join(lines)


def save_bench(r: BenchResult, path: str | os.PathLike) -> None:
    from dataclasses import asdict

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(asdict(r), indent=1, default=str))
