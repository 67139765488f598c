"""LR schedules by iteration, sharded evaluation order, deterministic training order."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from regpose.config import TrainConfig
from regpose.engine.samplers import InferenceSampler, TrainBatchSampler
from regpose.engine.schedule import lr_factor

sys.path.insert(0, str(Path(__file__).resolve().parent))


def test_warmup_then_steps():
    cfg = TrainConfig(schedule="step", warmup_iters=10, warmup_factor=0.01, gamma=0.1)
    steps = [100, 150]
    assert lr_factor(0, cfg, 200, steps) == pytest.approx(0.01)
    assert lr_factor(5, cfg, 200, steps) == pytest.approx(0.01 * 0.5 + 0.5)
    assert lr_factor(10, cfg, 200, steps) == 1.0
    assert lr_factor(99, cfg, 200, steps) == 1.0
    assert lr_factor(100, cfg, 200, steps) == pytest.approx(0.1)
    assert lr_factor(150, cfg, 200, steps) == pytest.approx(0.01)


def test_cosine_reaches_floor():
    cfg = TrainConfig(schedule="cosine", warmup_iters=0, min_lr_factor=0.05)
    assert lr_factor(0, cfg, 100, []) == pytest.approx(1.0)
    assert lr_factor(50, cfg, 100, []) == pytest.approx(0.05 + 0.95 * 0.5)
    assert lr_factor(100, cfg, 100, []) == pytest.approx(0.05)
    assert lr_factor(25, cfg, 100, []) == pytest.approx(0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi / 4)))


@pytest.mark.parametrize("size,world", [(10, 3), (7, 2), (2, 4), (100, 8)])
def test_inference_shards_cover_every_sample_once(size, world):
    seen = [i for r in range(world) for i in InferenceSampler(size, r, world)]
    assert sorted(seen) == list(range(size))


def test_train_order_is_the_same_for_any_number_of_processes_and_resumes():
    one = TrainBatchSampler(10, 4, seed=5, total=6)
    a = TrainBatchSampler(10, 2, rank=0, world_size=2, seed=5, total=6)
    b = TrainBatchSampler(10, 2, rank=1, world_size=2, seed=5, total=6)
    for g, x, y in zip(one, a, b):
        assert g == x + y
    resumed = list(TrainBatchSampler(10, 4, seed=5, start=3, total=6))
    assert resumed == list(one)[3:]
    # each epoch is a permutation of the data set
    flat = [i for batch in TrainBatchSampler(10, 5, seed=1, total=2) for i, _ in batch]
    assert sorted(flat) == list(range(10))
    seeds = [s for batch in TrainBatchSampler(10, 5, seed=1, total=4) for _, s in batch]
    assert len(set(seeds)) == len(seeds)   # every sample position gets its own augmentation seed


def test_bench_counts_parameters_and_macs_of_the_tiny_model(tmp_path):
    from regpose.engine.bench import run_bench
    from tiny_method import tiny_config

    cfg = tiny_config(tmp_path)
    r = run_bench(cfg, input_hw=(32, 32), batch_sizes=(1, 4), runs=3, warmup=1, threads=1)
    # conv 3->8 3x3 at 32x32, conv 8->8 3x3 stride 2 at 16x16, linear 8->2
    macs = 8 * 3 * 9 * 32 * 32 + 8 * 8 * 9 * 16 * 16 + 8 * 2
    assert round(r.gmacs * 1e9) == macs
    assert r.flops_by_op == {"aten.convolution": 2 * (macs - 16), "aten.addmm": 2 * 16}
    assert r.params == (8 * 3 * 9 + 8) + (8 * 8 * 9 + 8) + (8 * 2 + 2)
    assert set(r.latency) == {1, 4} and all(v["median_ms"] > 0 for v in r.latency.values())
    assert r.threads == 1
