"""One process-wide pool of CPU worker threads whose torch ops run single-threaded.

Why: QueryPose's eager CPU inference decodes keypoints proposal-chunk by proposal-chunk; chunks are independent,
so running them on ``torch.get_num_threads()`` workers with one intra-op thread each replaces thousands of small
OpenMP parallel regions (which stall whenever another process takes a core) by coarse-grained parallelism. The
pool is created once and reused (threads are costly to start per image); asking for another size replaces it.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

__all__ = ["worker_pool"]

_POOL: tuple[int, ThreadPoolExecutor] | None = None


def worker_pool(threads: int) -> ThreadPoolExecutor:
    """The process-wide pool of ``threads`` workers, each running torch ops single-threaded."""
    global _POOL
    if _POOL is None or _POOL[0] != threads:
        if _POOL is not None:
            _POOL[1].shutdown(wait=False)
        _POOL = (threads, ThreadPoolExecutor(threads, thread_name_prefix="regpose-worker",
                                             initializer=torch.set_num_threads, initargs=(1,)))
    return _POOL[1]
