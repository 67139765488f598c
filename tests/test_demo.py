"""``regpose demo``'s choices that do not need a training run: its compute threads."""
from __future__ import annotations

import os

from regpose.config import load_config
from regpose.demo import SYNTHETIC_CONFIGS, configs_dir, demo_threads


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def test_demo_leaves_one_core_to_each_data_worker():
    cfg = load_config(configs_dir() / SYNTHETIC_CONFIGS["poseur"], ["train.num_workers=1"])
    assert demo_threads(cfg) == max(1, _cores() - 1)
    cfg.train.num_workers = 0
    assert demo_threads(cfg) == _cores()


def test_demo_computes_on_one_thread_when_workers_fill_the_cores():
    cfg = load_config(configs_dir() / SYNTHETIC_CONFIGS["poseur"], [f"train.num_workers={_cores() + 2}"])
    assert demo_threads(cfg) == 1
