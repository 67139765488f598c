"""Train shipped configs with BatchNorm statistics held fixed (the process-count equivalence test, also under torchrun).

usage: python run_frozen_bn.py JOBS.json     JOBS.json: [{"config": PATH, "overrides": ["key=value", ...]}, ...]

Every BatchNorm2d keeps normalising with its running statistics in training (eval-mode BN; its affine parameters
still learn), so a batch split over processes normalises exactly like the whole batch. One process group serves
every job in turn (one launch instead of one per config)."""
import json
import sys
from pathlib import Path

import torch
from torch import nn

import regpose.models
from regpose.config import load_config
from regpose.engine import dist
from regpose.engine.trainer import Trainer


class StatsFrozenBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that always normalises with its running statistics (and never updates them)."""

    def train(self, mode: bool = True):
        return super().train(False)


def build_with_frozen_bn_stats(cfg, init_trunk: bool = False, _build=regpose.models.build_model):
    model = _build(cfg, init_trunk=init_trunk)
    for m in model.modules():
        if type(m) is nn.BatchNorm2d:
            m.__class__ = StatsFrozenBatchNorm2d
    if dist.is_main_process():   # the starting point, so a test can measure how far the weights moved
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), out / "init.pth")
    return model.train()


if __name__ == "__main__":
    torch.set_num_threads(1)
    # the trainer builds its model through the name it imported (regpose.engine.trainer.build_model)
    regpose.engine.trainer.build_model = build_with_frozen_bn_stats
    for job in json.loads(open(sys.argv[1]).read()):
        Trainer(load_config(job["config"], job["overrides"])).train()
    dist.cleanup()
