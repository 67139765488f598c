"""One rank of a 2-process DDP step on DEKR's offset loss (run by test_dekr.py through torch.distributed.run).

Rank r takes half of a fixed batch whose halves have very different numbers of supervised offsets, computes the
loss with :func:`regpose.models.dekr.offset_loss` through a DDP-wrapped module (DDP averages the gradients), and
rank 0 saves the loss of every rank and the averaged gradient to ``argv[1]``."""
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from regpose.models.dekr import offset_loss


class Scale(nn.Module):
    """pred = theta * x: one shared parameter, so DDP's gradient averaging is what is tested."""

    def __init__(self, shape):
        super().__init__()
        self.theta = nn.Parameter(torch.linspace(0.5, 1.5, int(torch.tensor(shape).prod())).view(shape))

    def forward(self, x):
        return self.theta * x


def offset_batch(n: int = 4, c: int = 4, h: int = 6, w: int = 6):
    """(x, gt, weight): images 0-1 supervise most offsets, images 2-3 only a few, with 1/sqrt(area) weights."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, h, w, generator=g)
    gt = torch.randn(n, c, h, w, generator=g)
    weight = torch.zeros(n, c, h, w)
    weight[:2, :, :, 1:] = 0.05
    weight[2:, :2, :2, :2] = 0.02
    return x, gt, weight


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    x, gt, weight = offset_batch()
    per = x.shape[0] // world
    rows = slice(rank * per, (rank + 1) * per)
    model = DDP(Scale(x.shape[1:]))
    loss = offset_loss(model(x[rows]), gt[rows], weight[rows])
    loss.backward()
    losses = [torch.zeros(()) for _ in range(world)]
    dist.all_gather(losses, loss.detach())
    if rank == 0:
        torch.save({"losses": torch.stack(losses), "grad": model.module.theta.grad}, sys.argv[1])
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
