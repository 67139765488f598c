"""How many CPU threads torch computes with, for every command that computes (train, test, demo, infer, bench).

The rule (``--threads N`` overrides it, and so does an explicit ``OMP_NUM_THREADS``, which torch itself follows):
each process of this node gets an equal share of the cores this process
may run on, minus one core per data-loader worker it starts (each worker computes on one thread, see
``engine/trainer.py``), at least one:

    threads = max(1, cores // processes_per_node - data_workers)

so training with 2 workers on a 2-core machine computes on 1 thread instead of fighting its own workers for the
cores, and `torchrun --nproc_per_node=8` on 64 cores gives each process 8 cores minus its workers. torch's own
default (every core, in every process) oversubscribes as soon as workers or several processes run.
"""
from __future__ import annotations

import logging
import os

__all__ = ["available_cores", "default_threads", "set_threads"]

log = logging.getLogger("regpose")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity: a container's or ``taskset``'s limit), else all."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:          # macOS, Windows
        return os.cpu_count() or 1


def default_threads(data_workers: int = 0, processes_per_node: int | None = None) -> int:
    """The rule of this module; ``processes_per_node`` defaults to torchrun's ``LOCAL_WORLD_SIZE`` (1 alone)."""
    procs = processes_per_node or int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, available_cores() // max(1, procs) - int(data_workers))


def set_threads(requested: int | None = None, data_workers: int = 0, announce: bool = True) -> int:
    """Set torch's intra-op thread count to ``requested`` or the default rule, say so in the log (unless the
    command reports it itself: ``announce=False``), return it."""
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if requested:
        n, why = int(requested), "--threads"
    elif omp.isdigit() and int(omp) > 0:
        n, why = int(omp), "OMP_NUM_THREADS"
    else:
        n = default_threads(data_workers)
        procs = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
        share = f"{available_cores()} cores" + (f" / {procs} processes" if procs > 1 else "")
        why = f"default: {share} - {data_workers} data workers, at least 1; --threads N sets it"
    import torch   # here, not at the top: the CLI imports this module before it knows a command needs torch

    torch.set_num_threads(n)
    if announce:
        log.info("torch threads: %d (%s)", n, why)
    return n
