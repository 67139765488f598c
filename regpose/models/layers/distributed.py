"""Loss normalisers over the global batch of a data-parallel (DDP) run.

A loss that divides a sum by a data-dependent count (positive locations, matched people, labelled keypoints...)
must divide by the count of the *global* batch, or the result depends on how the batch is split over processes.
DDP averages the gradients of the W processes, so each process divides its local sum by ``global count / W``:
the averaged gradient is then that of ``global sum / global count``, the same as one process with the whole
batch. This is the FCOS / DETR / Sparse R-CNN rule (``all_reduce(num) / world_size``, clamped).
"""
from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["global_normalizer"]


def global_normalizer(count: torch.Tensor, min_value: float = 1.0) -> torch.Tensor:
    """``max(sum of count over processes / world size, min_value)``, detached (a float tensor on count's device).

    count: this process's scalar count (any dtype; integers become float32). Without an initialised process group
    (one process) it is ``max(count, min_value)``. A collective when distributed: every process must call it the
    same number of times in the same order, also when its own count is 0."""
    count = count.detach()
    if not count.is_floating_point():
        count = count.float()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        count = count.clone()
        dist.all_reduce(count)
        count = count / dist.get_world_size()
    return count.clamp(min=min_value)
