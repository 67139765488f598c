"""regpose/engine/dist.py: one process behaves as a world of one (no process group needed), and two real gloo
processes started the way torchrun starts them (RANK / WORLD_SIZE / LOCAL_RANK / MASTER_* in the environment)
gather objects, average logs and agree on ranks."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from regpose.engine import dist as rdist


def test_one_process_is_a_world_of_one(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert rdist.init_distributed("cpu") == torch.device("cpu")
    assert not dist.is_initialized()                          # no process group for a single process
    assert (rdist.get_rank(), rdist.get_world_size(), rdist.local_rank()) == (0, 1, 0)
    assert rdist.is_main_process()
    rdist.barrier()                                           # a no-op, not a hang
    obj = {"AP": 0.5, "ids": [1, 2]}
    assert rdist.all_gather_object(obj) == [obj]
    logs = {"loss": 1.25, "lr": 0.1}
    assert rdist.reduce_mean(logs) == logs and rdist.reduce_mean({}) == {}
    rdist.cleanup()                                           # nothing to clean: no error
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert rdist.local_rank() == 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    try:
        device = rdist.init_distributed("cpu")
        rdist.barrier()
        out[rank] = {"device": str(device), "rank": rdist.get_rank(), "world": rdist.get_world_size(),
                     "main": rdist.is_main_process(), "local": rdist.local_rank(),
                     "gathered": rdist.all_gather_object({"rank": rank, "images": [rank] * (rank + 1)}),
                     "mean": rdist.reduce_mean({"loss": 1.0 + 2.0 * rank, "lr": 0.1})}
    finally:
        rdist.cleanup()


def test_two_gloo_processes_gather_and_average():
    with mp.Manager() as manager:
        out = manager.dict()
        mp.start_processes(_worker, args=(_free_port(), out), nprocs=2, start_method="fork")
        out = dict(out)
    gathered = [{"rank": 0, "images": [0]}, {"rank": 1, "images": [1, 1]}]
    for rank in (0, 1):
        r = out[rank]
        assert (r["device"], r["rank"], r["world"], r["main"], r["local"]) == ("cpu", rank, 2, rank == 0, rank)
        assert r["gathered"] == gathered                       # every process sees every process's object, in order
        assert r["mean"] == pytest.approx({"loss": 2.0, "lr": 0.1})
