"""Engine behaviour with the tiny method: DDP equivalence, exact resume after SIGKILL, NaN guard, accumulation."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from regpose.engine.checkpoint import load_checkpoint
from regpose.engine.trainer import TrainingError, train

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from tiny_method import TinyDataset, tiny_config  # noqa: E402

PY = sys.executable
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def _run(out: Path, *args: str, check=True) -> subprocess.CompletedProcess:
    return subprocess.run([PY, str(HERE / "run_tiny.py"), str(out), *args], env=ENV, capture_output=True,
                          text=True, check=check, timeout=240)


def test_two_process_ddp_equals_one_process_with_same_global_batch(tmp_path):
    """torchrun --nproc_per_node=2 (gloo) with 2x4 images == 1 process with 8 images, same data order."""
    one, two = tmp_path / "one", tmp_path / "two"
    _run(one, "train.batch_size=8", "train.iters=6")
    cmd = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "run_tiny.py"), str(two), "train.batch_size=4", "train.iters=6"]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    w1, w2 = _weights(one / "model_final.pth"), _weights(two / "model_final.pth")
    assert _max_diff(w1, w2) <= 1e-5
    init = _weights(one / "last.pth")  # sanity: training moved the weights
    assert _max_diff(w1, init) == 0.0
    # the two runs differ from an untrained model
    from tiny_method import TinyNet
    torch.manual_seed(3)
    assert _max_diff(w1, TinyNet().state_dict()) > 1e-3


def test_sigkill_then_resume_equals_straight_run(tmp_path):
    """N iterations straight == N/2, SIGKILL, --resume to N (dropout and loader workers included)."""
    common = ["train.iters=40", "train.batch_size=4", "model.dropout=0.3", "train.num_workers=2",
              "train.log_period=5"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _run(straight, *common)
    proc = subprocess.Popen([PY, str(HERE / "run_tiny.py"), str(killed), *common, "train.checkpoint_period=20",
                             "model.sleep_ms=25"],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = killed / "model_0000020.pth"
    deadline = time.time() + 180
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed mid-way"
    assert ckpt.exists() and not (killed / "model_final.pth").exists()
    assert load_checkpoint(killed / "last.pth")["iteration"] == 20
    _run(killed, *common, "--resume")
    assert _max_diff(_weights(straight / "model_final.pth"), _weights(killed / "model_final.pth")) <= 1e-6


def test_gradient_accumulation_equals_larger_batch(tmp_path):
    cfg_a = tiny_config(tmp_path / "a", batch_size=8, iters=5)
    cfg_b = tiny_config(tmp_path / "b", batch_size=4, iters=5, accum_steps=2)
    train(cfg_a, train_dataset=TinyDataset())
    train(cfg_b, train_dataset=TinyDataset())
    assert _max_diff(_weights(tmp_path / "a" / "model_final.pth"), _weights(tmp_path / "b" / "model_final.pth")) < 1e-5


def test_loss_falls_and_metrics_are_logged(tmp_path):
    cfg = tiny_config(tmp_path, batch_size=8, iters=60, log_period=10, lr=0.01)
    train(cfg, train_dataset=TinyDataset())
    import json
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in recs if r["split"] == "train"]
    assert len(losses) == 6 and losses[-1] < 0.5 * losses[0]
    assert {"lr", "iter_time", "data_time", "loss_xy", "mae"} <= set(recs[0])
    assert (tmp_path / "config.yaml").read_text().startswith("method: tiny")


def test_nan_loss_stops_with_clear_message_and_keeps_last_good_checkpoint(tmp_path):
    cfg = tiny_config(tmp_path, iters=20, checkpoint_period=5)
    cfg.model.nan_after = 12
    with pytest.raises(TrainingError, match=r"non-finite loss at iteration 12 \(loss_xy=nan.*last good checkpoint"):
        train(cfg, train_dataset=TinyDataset())
    state = load_checkpoint(tmp_path / "last.pth")
    assert state["iteration"] == 10
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_lr_rules_make_groups_and_unmatched_rule_is_an_error(tmp_path):
    from regpose.config import ConfigError, LrRule
    from regpose.engine.schedule import build_optimizer
    from tiny_method import TinyNet

    cfg = tiny_config(tmp_path).train
    cfg.lr_rules = [LrRule(pattern=r"^head\.", lr_mult=10.0, decay_mult=0.0)]
    opt = build_optimizer(TinyNet(), cfg)
    by_mult = {g["lr_mult"]: g for g in opt.param_groups}
    assert by_mult[10.0]["names"] == ["head.weight", "head.bias"]
    assert by_mult[10.0]["lr"] == pytest.approx(cfg.lr * 10) and by_mult[10.0]["weight_decay"] == 0.0
    assert len(by_mult[1.0]["names"]) == 4
    cfg.lr_rules = [LrRule(pattern="flow")]
    with pytest.raises(ConfigError, match="matches no trainable parameter"):
        build_optimizer(TinyNet(), cfg)
    # an optional rule (a parameter only some model variants have) may match nothing; the others still apply
    cfg.lr_rules = [LrRule(pattern="flow", lr_mult=10.0, optional=True), LrRule(pattern=r"^head\.", lr_mult=0.1)]
    opt = build_optimizer(TinyNet(), cfg)
    assert [(g["rule"], len(g["names"])) for g in opt.param_groups] == [(r"^head\.", 2), (None, 4)]


def test_training_prints_the_total_batch_and_follows_the_recipe_with_linear_scaling(tmp_path):
    """Recipe for a total batch of 8 run with 4 per step: with linear scaling the run uses lr x0.5 for twice the
    iterations; without, it keeps the recipe's values and warns."""
    import json
    import logging

    from regpose.engine.logging import get_logger

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    get_logger().addHandler(handler)
    try:
        cfg = tiny_config(tmp_path / "linear", batch_size=4, iters=3, lr=0.01, reference_batch=8,
                          batch_scaling="linear", log_period=1)
        train(cfg, train_dataset=TinyDataset())
        train(tiny_config(tmp_path / "none", batch_size=4, iters=3, reference_batch=8), train_dataset=TinyDataset())
    finally:
        get_logger().removeHandler(handler)
    assert load_checkpoint(tmp_path / "linear" / "model_final.pth")["iteration"] == 6
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "linear" / "metrics.jsonl").read_text().splitlines()]
    assert len(lrs) == 6 and lrs[0] == pytest.approx(0.005)
    messages = [(r.levelno, r.getMessage()) for r in records]
    assert (logging.INFO, "total batch 4 = 1 process(es) x 4 per process x 1 accumulation step(s); recipe: 8; "
                          "linear scaling x0.5: lr 0.01 -> 0.005, iters 3 -> 6") in messages
    assert any(level == logging.WARNING and "differs from the recipe's 8" in m for level, m in messages)
    assert load_checkpoint(tmp_path / "none" / "model_final.pth")["iteration"] == 3
