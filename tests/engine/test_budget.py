"""Fitting a schedule to a wall-clock budget (``regpose demo``, learning benchmarks)."""
from __future__ import annotations

from pathlib import Path

import pytest

from regpose.config import ConfigError, load_config
from regpose.engine.budget import fit_schedule_to_budget, seconds_per_iteration

REPO = Path(__file__).resolve().parents[2]


def _cfg(tmp_path, *extra):
    return load_config(REPO / "configs" / "rle" / "rle_tiny_synthetic.yaml", [
        f"data.train.root={tmp_path}/train", "data.train.synthetic.num_images=6",
        f"data.val.root={tmp_path}/val", "data.val.synthetic.num_images=2", "train.batch_size=2", *extra])


def test_schedule_is_scaled_to_the_budget(tmp_path):
    cfg = _cfg(tmp_path, "train.iters=1000", "train.schedule=step", "train.steps=[800,900]",
               "train.warmup_iters=300", "train.ema.enabled=true", "train.ema.warmup=500", "train.log_period=50")
    iters = fit_schedule_to_budget(cfg, minutes=2.0, sec_per_iter=0.24, fraction=0.9)
    assert iters == 450                                   # 0.9 * 120 s / 0.24 s
    tc = cfg.train
    assert (tc.iters, tc.steps, tc.warmup_iters, tc.ema.warmup) == (450, [360, 405], 45, 90)
    assert tc.max_minutes == 2.0 and tc.log_period == 22


def test_epoch_schedules_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="train.epochs"):
        fit_schedule_to_budget(_cfg(tmp_path, "train.epochs=3"), 1.0, 0.1)


def test_seconds_per_iteration_times_real_steps(tmp_path):
    cfg = _cfg(tmp_path)
    sec = seconds_per_iteration(cfg, steps=2, warmup=1)
    assert 0.0 < sec < 30.0
    fastest = seconds_per_iteration(cfg, steps=3, warmup=1, statistic="min")
    assert 0.0 < fastest < 30.0
    with pytest.raises(ValueError, match="statistic"):
        seconds_per_iteration(cfg, statistic="mean")
    assert (tmp_path / "train" / "annotations.json").is_file()   # the synthetic split was generated
