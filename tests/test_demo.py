"""``regpose demo``'s choices that do not need a training run: its compute threads."""
from __future__ import annotations

import os

from regpose.config import load_config
from regpose.demo import SYNTHETIC_CONFIGS, configs_dir, demo_threads


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def test_demo_computes_on_every_core_its_light_data_worker_mostly_waits():
    """The demo's default: all cores (measured faster than leaving one to its data worker, see demo_threads),
    whatever the worker count; regpose.threads' training rule would give cores - workers."""
    cfg = load_config(configs_dir() / SYNTHETIC_CONFIGS["poseur"])
    assert cfg.train.num_workers >= 1 and demo_threads() == _cores()
