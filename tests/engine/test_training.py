"""Engine behaviour with the tiny method: DDP equivalence, exact resume after SIGKILLs (also inside checkpoint
writes), NaN guard, accumulation, run folders, and one-line errors for bad data and unusable checkpoints."""
from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REAL
from regpose.checkpoint import load_checkpoint
from regpose.engine.trainer import TrainingError, train
from regpose.errors import DataError

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


def _train_iters(run: Path) -> list[int]:
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["iter"] for r in recs if r["split"] == "train"]


def _last_logged(run: Path) -> int:
    """The last training iteration in ``run``'s metrics (0 if none yet; a line being written is not one yet)."""
    try:
        return max(_train_iters(run), default=0)
    except (FileNotFoundError, ValueError):
        return 0


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 120.0) -> bool:
    """SIGKILL ``proc`` as soon as ``ready()`` holds; False if the run ended first."""
    deadline = time.time() + timeout
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def test_sigkills_at_random_points_and_inside_checkpoint_writes_then_resume_equal_a_straight_run(tmp_path):
    """Kill training (SIGKILL) four times, twice inside a checkpoint write (its temporary file exists) and twice at
    a random moment of training; restart each time as a user would (--resume, or --overwrite when no checkpoint
    was completed yet). The final weights equal an uninterrupted run's, no temporary file remains, and the metrics
    hold every logged iteration once. Dropout and a loader worker make the exact resume non-trivial; 4 MB
    checkpoints make each write last long enough to be hit."""
    common = ["train.iters=40", "train.batch_size=4", "model.dropout=0.3", "train.num_workers=1",
              "train.log_period=2", "train.checkpoint_period=5", "model.pad_mb=4"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _run(straight, *common)
    rng = random.Random(0)
    killed_in_write = 0
    for k in range(4):
        flag = "--resume" if (killed / "last.pth").exists() else "--overwrite"
        proc = subprocess.Popen([PY, str(HERE / "run_tiny.py"), str(killed), flag, *common, "model.sleep_ms=20"],
                                env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if k % 2 == 0:      # inside the next checkpoint write
            seen = set(killed.glob(".*.tmp"))
            if _kill_when(proc, lambda: bool(set(killed.glob(".*.tmp")) - seen)):
                killed_in_write += 1
                assert list(killed.glob(".*.tmp")), "the kill left the write's temporary behind"
        else:               # a random iteration a few ahead, at a random moment within it
            target, pause = _last_logged(killed) + rng.randint(2, 8), rng.uniform(0.0, 0.03)
            _kill_when(proc, lambda: _last_logged(killed) >= target and not time.sleep(pause))
    assert killed_in_write == 2, "the runs ended before they could be killed inside a checkpoint write"
    assert not (killed / "model_final.pth").exists()
    _run(killed, *common, "--resume" if (killed / "last.pth").exists() else "--overwrite")
    assert _max_diff(_weights(straight / "model_final.pth"), _weights(killed / "model_final.pth")) <= 1e-6
    assert not list(killed.glob("*.tmp")) and not list(killed.glob(".*.tmp"))
    assert _train_iters(killed) == _train_iters(straight) == list(range(2, 41, 2))


def test_ctrl_c_or_sigterm_save_the_current_iteration_and_the_run_resumes_exactly(tmp_path):
    """No periodic checkpoints: SIGTERM (`kill`) and then SIGINT (Ctrl-C, sent to the whole process group as a
    terminal does, loader worker included) each stop the run after its current iteration with last.pth saved;
    resuming twice ends where an uninterrupted run ends."""
    common = ["train.iters=24", "train.batch_size=4", "model.dropout=0.3", "train.num_workers=1",
              "train.log_period=2"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    _run(straight, *common)
    iterations = []
    for k, sig in enumerate((signal.SIGTERM, signal.SIGINT)):
        proc = subprocess.Popen([PY, str(HERE / "run_tiny.py"), str(stopped), *(["--resume"] if k else []), *common,
                                 "model.sleep_ms=40"], env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        before = _last_logged(stopped)
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline and _last_logged(stopped) <= before:
            time.sleep(0.01)
        (os.killpg if sig == signal.SIGINT else os.kill)(proc.pid, sig)
        err = proc.communicate(timeout=60)[1]
        assert proc.returncode != 0, "the run ended before it could be stopped"
        done = load_checkpoint(stopped / "last.pth")["iteration"]
        assert f"{sig.name} at iteration {done}/24: saved {stopped / 'last.pth'} (continue with --resume)" in err
        iterations.append(done)
    assert 0 < iterations[0] < iterations[1] < 24 and not (stopped / "model_final.pth").exists()
    _run(stopped, *common, "--resume")
    assert _max_diff(_weights(straight / "model_final.pth"), _weights(stopped / "model_final.pth")) <= 1e-6


def test_gradient_accumulation_equals_larger_batch(tmp_path):
    cfg_a = tiny_config(tmp_path / "a", batch_size=8, iters=5)
    cfg_b = tiny_config(tmp_path / "b", batch_size=4, iters=5, accum_steps=2)
    train(cfg_a, train_dataset=TinyDataset())
    train(cfg_b, train_dataset=TinyDataset())
    assert _max_diff(_weights(tmp_path / "a" / "model_final.pth"), _weights(tmp_path / "b" / "model_final.pth")) < 1e-5


def test_loss_falls_and_metrics_are_logged(tmp_path):
    cfg = tiny_config(tmp_path, batch_size=8, iters=60, log_period=10, lr=0.01)
    train(cfg, train_dataset=TinyDataset())
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


def test_freeze_patterns_must_match_and_leave_something_to_train(tmp_path):
    from regpose.config import ConfigError

    with pytest.raises(ConfigError, match=r"train.freeze\[1\]: pattern 'backbone' matches no parameter of the model"):
        train(tiny_config(tmp_path, freeze=["^head", "backbone"]), train_dataset=TinyDataset())
    with pytest.raises(ConfigError, match="train.freeze: every parameter is frozen, nothing would train"):
        train(tiny_config(tmp_path, freeze=["."]), train_dataset=TinyDataset())


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


def test_a_folder_holding_a_run_is_refused_unless_resume_or_overwrite(tmp_path):
    cfg = tiny_config(tmp_path, iters=4)
    train(cfg, train_dataset=TinyDataset())
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(TrainingError) as e:
        train(tiny_config(tmp_path, iters=6), train_dataset=TinyDataset())
    assert str(e.value) == (f"{tmp_path} already holds a training run (last.pth, metrics.jsonl, model_final.pth): "
                            f"continue it with --resume, start over with --overwrite, or choose another --output-dir")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before, "nothing may be touched"
    train(tiny_config(tmp_path, iters=6, checkpoint_period=3), overwrite=True, train_dataset=TinyDataset())
    assert _train_iters(tmp_path) == [2, 4, 6], "one run in metrics.jsonl, not two"
    assert load_checkpoint(tmp_path / "model_final.pth")["iteration"] == 6
    with pytest.raises(TrainingError, match="choose one"):
        train(cfg, resume=True, overwrite=True, train_dataset=TinyDataset())


def test_metrics_after_a_resume_hold_every_iteration_once(tmp_path):
    """Checkpoints every 3 iterations, logs every 2: the interrupted run logged iteration 8 after its last
    checkpoint (6); the resumed run must not log 8 a second time (with another value). Stale temporaries of the
    interrupted run are removed on resume."""
    cfg = tiny_config(tmp_path, iters=10, checkpoint_period=3)
    cfg.model.nan_after = 8          # stops at iteration 8 (0-based), i.e. after logging iteration 8
    with pytest.raises(TrainingError, match="last good checkpoint"):
        train(cfg, train_dataset=TinyDataset())
    assert _train_iters(tmp_path) == [2, 4, 6, 8] and load_checkpoint(tmp_path / "last.pth")["iteration"] == 6
    stale = tmp_path / ".last.pth.0123456789ab.tmp"
    stale.write_bytes(b"half a checkpoint")
    cfg.model.nan_after = -1
    train(cfg, resume=True, train_dataset=TinyDataset())
    assert _train_iters(tmp_path) == [2, 4, 6, 8, 10] and not stale.exists()


@pytest.mark.parametrize("workers", [0, 1])
def test_a_sample_failing_in_a_loader_worker_is_the_same_one_line_error(tmp_path, workers):
    class Unreadable(TinyDataset):
        def __getitem__(self, i):
            if i == 5:
                raise DataError("cannot decode image (corrupt or unsupported format): /data/5.jpg")
            return super().__getitem__(i)

    with pytest.raises(DataError) as e:
        train(tiny_config(tmp_path, iters=10, num_workers=workers), train_dataset=Unreadable(n=8))
    assert str(e.value) == ("cannot decode image (corrupt or unsupported format): /data/5.jpg "
                            "(train.skip_corrupt_images=true skips unreadable training images)")


def test_sync_bn_on_cpu_processes_trains_with_a_stated_fallback(tmp_path):
    cmd = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "run_tiny.py"), str(tmp_path), "train.sync_bn=true", "model.batch_norm=true", "train.iters=2"]
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "train.sync_bn=true needs CUDA (PyTorch's SyncBatchNorm runs on GPUs only): on CPU each of the 2 " \
           "processes normalises with its own batch statistics" in r.stderr
    assert load_checkpoint(tmp_path / "model_final.pth")["iteration"] == 2


def test_resume_refuses_checkpoints_it_cannot_continue_and_reports_config_changes(tmp_path, caplog):
    train(tiny_config(tmp_path, iters=4), train_dataset=TinyDataset())
    with pytest.raises(TrainingError, match=r"train.optimizer was 'adamw', now 'sgd': that state cannot be resumed"):
        train(tiny_config(tmp_path, iters=6, optimizer="sgd"), resume=True, train_dataset=TinyDataset())
    cfg = tiny_config(tmp_path, iters=6, lr_rules=[{"pattern": "^head", "lr_mult": 10.0}])
    with pytest.raises(TrainingError, match=r"the optimizer state does not fit this config \(loaded state dict has a "
                                            r"different number of parameter groups\); train.lr_rules"):
        train(cfg, resume=True, train_dataset=TinyDataset())
    logger = logging.getLogger("regpose")       # it does not propagate to the root logger caplog listens to
    logger.addHandler(caplog.handler)
    try:
        train(tiny_config(tmp_path, iters=6, lr=0.02), resume=True, train_dataset=TinyDataset())   # longer, other lr
    finally:
        logger.removeHandler(caplog.handler)
    assert "resuming with a config that differs from the checkpoint's: train.iters: 4 -> 6; train.lr: 0.01 -> 0.02" \
        in caplog.messages
    (tmp_path / "last.pth").write_bytes((tmp_path / "model_final.pth").read_bytes())   # weights only
    with pytest.raises(TrainingError, match=r"last.pth is not a training checkpoint \(it lacks optimizer, scaler, "
                                            r"best, rng\); .*train.init_weights"):
        train(tiny_config(tmp_path, iters=8), resume=True, train_dataset=TinyDataset())


def test_a_bad_validation_split_stops_before_training_and_a_failing_final_evaluation_keeps_the_weights(tmp_path):
    gt = json.loads((REAL / "coco" / "test_coco.json").read_text())
    gt["annotations"][0]["bbox"][0] = float("nan")
    bad = tmp_path / "val_nan.json"
    bad.write_text(json.dumps(gt))
    cfg = tiny_config(tmp_path / "a", iters=4)
    cfg.data.val.ann_files = [str(bad)]
    with pytest.raises(DataError, match=r"val_nan.json: annotation \d+ \(image_id \d+\): labelled keypoints or bbox "
                                        r"contain NaN"):
        train(cfg, train_dataset=TinyDataset())
    assert not (tmp_path / "a" / "last.pth").exists(), "the problem is found before any training"

    class Unreadable(TinyDataset):   # the validation image 3 cannot be read, and the user asked for strictness
        def __getitem__(self, i):
            if i == 3:
                raise DataError("cannot decode image (corrupt or unsupported format): /data/3.jpg")
            return super().__getitem__(i)

    cfg = tiny_config(tmp_path / "b", iters=4)
    cfg.test.strict = True
    with pytest.raises(DataError, match="test.strict=true"):
        train(cfg, train_dataset=TinyDataset(), val_dataset=Unreadable(n=8))
    assert load_checkpoint(tmp_path / "b" / "model_final.pth")["iteration"] == 4
