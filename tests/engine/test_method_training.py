"""The engine with a real method (the RLE baseline, top-down, synthetic data): DDP equivalence incl. sharded
evaluation, and exact resume after SIGKILL."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from regpose.engine.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs" / "rle" / "rle_tiny_synthetic.yaml")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("synth")
    return [f"data.train.root={root / 'train'}", "data.train.synthetic.num_images=24",
            f"data.val.root={root / 'val'}", "data.val.synthetic.num_images=6",
            "train.num_workers=0", "train.warmup_iters=0", "train.log_period=1", "test.batch_size=8"]


def _params(path: Path) -> dict[str, torch.Tensor]:
    sd = load_checkpoint(path)["model"]
    return {k: v for k, v in sd.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def _max_diff(a, b) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def _train(out: Path, *args: str, nproc: int = 1, port: int = 29531) -> subprocess.CompletedProcess:
    launcher = ([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={port}",
                 "-m", "regpose"] if nproc > 1 else [sys.executable, "-m", "regpose"])
    r = subprocess.run([*launcher, "train", CONFIG, "--output-dir", str(out), *args], env=ENV, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_torchrun_two_processes_equal_one_process_and_evaluation_is_sharded_exactly(tmp_path, synth):
    # Per-process batch 4 on 2 processes == 1 process with 2 accumulated micro-batches of 4: same global batch,
    # same data order and the same BatchNorm batches, so the parameters must agree.
    one, two = tmp_path / "one", tmp_path / "two"
    _train(one, *synth, "train.batch_size=4", "train.accum_steps=2", "train.iters=3")
    _train(two, *synth, "train.batch_size=4", "train.iters=3", nproc=2)
    p1, p2 = _params(one / "model_final.pth"), _params(two / "model_final.pth")
    assert _max_diff(p1, p2) <= 1e-5
    # evaluation: every person box of the val split is predicted exactly once, whatever the number of processes
    r1 = json.loads((one / "results_val.json").read_text())
    r2 = json.loads((two / "results_val.json").read_text())
    gt = json.loads((Path(synth[2].split("=", 1)[1]) / "annotations.json").read_text())
    expected = Counter(a["image_id"] for a in gt["annotations"] if a["num_keypoints"] > 0 and not a["iscrowd"])
    assert Counter(r["image_id"] for r in r2) == Counter(r["image_id"] for r in r1) == expected
    metrics = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert any(m["split"] == "val" and "AP" in m for m in metrics)


def test_sigkill_and_resume_equals_straight_run_with_a_method(tmp_path, synth):
    common = [*synth, "train.batch_size=4", "train.iters=12", "test.flip=false"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _train(straight, *common)
    proc = subprocess.Popen([sys.executable, "-m", "regpose", "train", CONFIG, "--output-dir", str(killed), *common,
                             "train.checkpoint_period=4"], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = killed / "model_0000004.pth"
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    state = load_checkpoint(killed / "last.pth")
    assert state["iteration"] in (4, 8) and not (killed / "model_final.pth").exists()
    _train(killed, *common, "train.checkpoint_period=4", "--resume")
    full_a = load_checkpoint(straight / "model_final.pth")["model"]
    full_b = load_checkpoint(killed / "model_final.pth")["model"]
    assert _max_diff(full_a, full_b) <= 1e-6   # parameters and BatchNorm statistics
