"""global_normalizer: the divisor that makes a count-normalised loss independent of the number of processes."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from regpose.models.layers.distributed import global_normalizer


def test_one_process_is_the_count_clamped_detached_and_float():
    assert global_normalizer(torch.tensor(7)).dtype == torch.float32
    assert float(global_normalizer(torch.tensor(7))) == 7.0
    assert float(global_normalizer(torch.tensor(0))) == 1.0                  # no positives: divide by 1
    assert float(global_normalizer(torch.tensor(0.25), 1e-6)) == 0.25         # e.g. a centerness sum
    assert global_normalizer(torch.tensor(0.0), 1e-6) == torch.tensor(1e-6)
    w = torch.tensor(3.0, requires_grad=True)
    assert not global_normalizer(w * 2).requires_grad


def _worker(rank: int, store: str, counts: list[float], out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=len(counts))
    try:
        out[rank] = [float(global_normalizer(torch.tensor(counts[rank]))),
                     float(global_normalizer(torch.tensor(int(counts[rank] > 100)), 0.5))]   # both ranks 0
    finally:
        dist.destroy_process_group()


def test_two_processes_divide_by_the_mean_of_their_counts(tmp_path):
    """Counts 3 and 6: both processes divide by 4.5, so DDP's gradient average equals sum / 9 of one process."""
    with mp.Manager() as manager:
        out = manager.dict()
        mp.start_processes(_worker, args=(str(tmp_path / "store"), [3.0, 6.0], out), nprocs=2,
                           start_method="fork")
        assert dict(out) == {0: [4.5, 0.5], 1: [4.5, 0.5]}
