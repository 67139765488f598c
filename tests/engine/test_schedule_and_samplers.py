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


def _recipe(**kw) -> TrainConfig:
    return TrainConfig(**{"batch_size": 2, "reference_batch": 16, "batch_scaling": "linear", **kw})


def test_linear_scaling_moves_an_8_gpu_iteration_recipe_to_2_gpus():
    """QueryPose R-50 recipe (2 images x 8 GPUs = 16; lr 2.5e-5; 140k iterations, x0.1 at 110k / 130k; 1000 warm-up)
    on 2 GPUs: total batch 4, k = 4 / 16 = 1/4 -> lr / 4, every iteration count x 4."""
    from dataclasses import replace

    from regpose.engine.schedule import scale_to_total_batch

    cfg = _recipe(lr=2.5e-5, iters=140_000, steps=[110_000, 130_000], warmup_iters=1000, eval_period=10_000,
                  checkpoint_period=5000)
    two = scale_to_total_batch(cfg, world_size=2)
    assert two.lr == pytest.approx(6.25e-6)
    assert (two.iters, two.steps, two.warmup_iters) == (560_000, [440_000, 520_000], 4000)
    assert (two.eval_period, two.checkpoint_period) == (40_000, 20_000)
    assert two.warmup_factor == cfg.warmup_factor and two.batch_size == 2
    sixteen = scale_to_total_batch(cfg, world_size=16)          # larger total batch: k = 2
    assert sixteen.lr == pytest.approx(5e-5) and (sixteen.iters, sixteen.steps) == (70_000, [55_000, 65_000])
    # the reference total batch (also reached with accumulation) and scaling 'none' leave the recipe alone
    assert scale_to_total_batch(cfg, world_size=8) is cfg
    assert scale_to_total_batch(replace(cfg, accum_steps=4), world_size=2).lr == 2.5e-5
    assert scale_to_total_batch(replace(cfg, batch_scaling="none"), world_size=2).iters == 140_000


def test_linear_scaling_of_an_epoch_recipe_scales_lr_warmup_and_periods_while_epochs_follow_the_batch():
    """Poseur R-50 (32 crops x 8 GPUs = 256; lr 1e-3; 325 epochs, x0.1 at epochs 255 / 310; warm-up 500; eval every
    14,625 iterations) on 2 GPUs over COCO's 149,813 training people: 149,813 / 64 = 2,340.83 iterations per epoch."""
    from regpose.engine.schedule import iteration_schedule, scale_to_total_batch

    cfg = _recipe(batch_size=32, reference_batch=256, lr=1e-3, epochs=325, step_epochs=[255, 310],
                  warmup_iters=500, eval_period=14_625)
    two = scale_to_total_batch(cfg, world_size=2)
    assert two.lr == pytest.approx(2.5e-4) and two.warmup_iters == 2000 and two.eval_period == 58_500
    assert (two.epochs, two.step_epochs) == (325, [255, 310])
    assert iteration_schedule(two, 149_813, world_size=2) == (760_770, [596_911, 725_657])
    assert iteration_schedule(cfg, 149_813, world_size=8) == (190_193, [149_228, 181_414])


def test_total_batch_messages_name_the_numbers_and_the_two_ways_to_follow_the_recipe():
    from dataclasses import replace

    from regpose.engine.schedule import scale_to_total_batch, total_batch_messages

    cfg = _recipe(batch_size=32, reference_batch=256, batch_scaling="none", lr=1e-3, epochs=325)
    line, warning = total_batch_messages(cfg, scale_to_total_batch(cfg, 2), world_size=2)
    assert line == ("total batch 64 = 2 process(es) x 32 per process x 1 accumulation step(s); recipe: 256")
    assert "train.accum_steps=4" in warning and "train.batch_scaling=linear (lr x0.25, iteration counts x4)" in warning
    assert total_batch_messages(cfg, cfg, world_size=8)[1] == ""
    linear = replace(cfg, batch_scaling="linear", warmup_iters=500)
    line, warning = total_batch_messages(linear, scale_to_total_batch(linear, 2), world_size=2)
    assert warning == "" and line.endswith("linear scaling x0.25: lr 0.001 -> 0.00025, warmup_iters 500 -> 2000")
