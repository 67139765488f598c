"""torch.distributed helpers: one process or many through ``torchrun`` (gloo on CPU, nccl on CUDA).

Multi-node runs use torchrun's own rendezvous flags (``--nnodes --node_rank --rdzv_endpoint``); nothing here
reimplements them: we read RANK / WORLD_SIZE / LOCAL_RANK from the environment torchrun sets.
"""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["init_distributed", "get_rank", "get_world_size", "is_main_process", "barrier", "all_gather_object",
           "reduce_mean", "local_rank", "cleanup", "convert_sync_batchnorm"]


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def init_distributed(device: str = "auto") -> torch.device:
    """Initialise the process group if launched by torchrun; return this process's device."""
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    world = int(os.environ.get("WORLD_SIZE", 1))
    if use_cuda:
        torch.cuda.set_device(local_rank())
        dev = torch.device("cuda", local_rank())
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return dev


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if get_world_size() > 1:
        dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    if get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def reduce_mean(values: dict[str, float]) -> dict[str, float]:
    """Average scalar logs over processes (for logging only)."""
    if get_world_size() == 1 or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    t /= get_world_size()
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def convert_sync_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """BatchNorm layers -> SyncBatchNorm with the network's function unchanged. timm's conversion keeps the
    activation (and drop) fused into timm's ``BatchNormAct2d`` (MobileNetV2's ReLU6, every EfficientNet-family
    norm); ``nn.SyncBatchNorm.convert_sync_batchnorm`` would drop them. FrozenBatchNorm stays frozen."""
    from timm.layers import convert_sync_batchnorm as timm_convert

    return timm_convert(model)
