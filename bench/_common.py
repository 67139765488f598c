"""What every benchmark shares: where the repository and the shared reference data are, the thread setting, the
machine description, side-by-side timing (interleaved rounds, medians), command-line and result-file helpers.

Speed is only ever a ratio measured side by side in one run: :func:`interleaved` times the candidates in rounds
(a b c a b c ...) so that load drift on a shared machine hits all of them alike.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def shared_dir(required: bool = True) -> Path:
    """The folder with the official reference data and real samples: ``$REGPOSE_SHARED``, else the repository's
    sibling ``../shared`` (as the tests). ``required``: stop with one line when it is missing."""
    shared = Path(os.environ.get("REGPOSE_SHARED") or REPO.parent / "shared")
    if required and not (shared / "reference").is_dir():
        raise SystemExit(f"shared reference data not found at {shared}: set REGPOSE_SHARED=/path/to/shared "
                         f"(the folder holding reference/ and data/real/)")
    return shared


def set_threads(n: int) -> int:
    """Intra-op threads for the whole benchmark; returns what torch actually uses."""
    torch.set_num_threads(n)
    return torch.get_num_threads()


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """What a result depends on besides the code: CPU, threads, library versions."""
    return {"cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version()}


def summary(seconds: list[float], cpu_seconds: list[float] | None = None) -> dict:
    """Milliseconds: median, min, max, 10th / 90th percentiles and every run (plus process CPU time if given)."""
    ms = [1000 * s for s in seconds]
    p10, p90 = np.percentile(ms, [10, 90])
    out = {"median_ms": statistics.median(ms), "min_ms": min(ms), "max_ms": max(ms), "p10_ms": float(p10),
           "p90_ms": float(p90), "runs": len(ms), "times_ms": [round(t, 3) for t in ms]}
    if cpu_seconds:
        out.update(cpu_median_ms=1000 * statistics.median(cpu_seconds), cpu_min_ms=1000 * min(cpu_seconds))
    return out


def interleaved(fns: dict[str, Callable[[], object]], *, runs: int, warmup: int = 1,
                progress: bool = False) -> dict[str, dict]:
    """Time every callable ``runs`` times in interleaved rounds after ``warmup`` untimed rounds: name ->
    :func:`summary` (wall and process CPU time). ``progress`` prints each round's times (slow benchmarks)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for r in range(runs):
        for k, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
        if progress:
            print(f"  round {r + 1}/{runs}: " + ", ".join(f"{k} {1000 * wall[k][-1]:.0f} ms" for k in fns),
                  flush=True)
    return {k: summary(wall[k], cpu[k]) for k in fns}


def round_ratios(a: dict, b: dict) -> dict:
    """``a`` / ``b`` for two :func:`interleaved` summaries of the same rounds: the ratio of the medians and the
    median and range of the per-round ratios (each round's two runs saw the same machine load)."""
    per_round = [x / y for x, y in zip(a["times_ms"], b["times_ms"])]
    return {"ratio_of_medians": a["median_ms"] / b["median_ms"], "median_round_ratio": statistics.median(per_round),
            "min_round_ratio": min(per_round), "max_round_ratio": max(per_round)}


def format_ratio(r: dict) -> str:
    """One line for :func:`round_ratios`."""
    return (f"{r['ratio_of_medians']:.2f} (ratio of medians; per round: median {r['median_round_ratio']:.2f}, "
            f"range {r['min_round_ratio']:.2f}-{r['max_round_ratio']:.2f})")


def timed(fn: Callable[[], object], *, runs: int, warmup: int = 1) -> dict:
    """:func:`summary` of one callable timed ``runs`` times after ``warmup`` untimed calls."""
    return interleaved({"fn": fn}, runs=runs, warmup=warmup)["fn"]


class ModuleTimer:
    """Wall time accumulated inside the given modules' forward calls (forward pre / post hooks), e.g. a layer's
    share of the whole network's time."""

    def __init__(self, modules):
        self.total = 0.0
        self._start: dict[int, float] = {}
        self._handles = []
        for m in modules:
            self._handles.append(m.register_forward_pre_hook(self._enter))
            self._handles.append(m.register_forward_hook(self._leave))

    def _enter(self, module, _inputs):
        self._start[id(module)] = time.perf_counter()

    def _leave(self, module, _inputs, _outputs):
        self.total += time.perf_counter() - self._start.pop(id(module))

    def reset(self) -> None:
        self.total = 0.0

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser whose ``--help`` shows the benchmark's whole docstring (what it measures, how to run)."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_timing_args(ap: argparse.ArgumentParser, *, runs: int, warmup: int, threads: int = 2) -> None:
    """``--threads``, ``--runs`` (timed rounds) and ``--warmup`` (untimed rounds)."""
    ap.add_argument("--threads", type=int, default=threads, help="intra-op threads")
    ap.add_argument("--runs", type=int, default=runs, help="timed rounds (medians over them)")
    ap.add_argument("--warmup", type=int, default=warmup, help="untimed rounds first")


def write_json(path: str | Path, data) -> Path:
    """Write ``data`` as JSON (parent folders created) and say where."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    print(f"wrote {path}")
    return path


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The rows of a training run's ``metrics.jsonl`` (complete lines only; none if the file is missing)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:      # a line being written when the run stopped
            continue
    return rows
