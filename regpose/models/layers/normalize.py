"""Loss normalisers over the global batch, so a loss that divides by a data-dependent count (positive pixels,
matched people, ...) gives the same gradients with one process or many at the same total batch."""
from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["global_normalizer"]


def global_normalizer(count: torch.Tensor, minimum: float = 1.0) -> torch.Tensor:
    """Divisor for a loss *summed* over this process's samples: max(sum of ``count`` over all processes, minimum)
    / world size (detached float32 scalar; ``count`` lives on the loss's device, summed in float64).

    DDP averages gradients over the W processes, so each rank dividing its own sum by global_count / W gives
    (1/W) sum_r W sum_r / global_count = (sum over the global batch) / global_count: the one-process result for the
    same total batch. With one process it is max(count, minimum). Every process must call it (all-reduce)."""
    c = count.detach().to(torch.float64)
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if world > 1:
        dist.all_reduce(c)
    return (c.clamp(min=minimum) / world).to(torch.float32)
