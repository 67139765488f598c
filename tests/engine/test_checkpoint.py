"""Checkpoints: atomic replacement survives a killed writer; weights-only loading; mismatch reports by name."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from regpose.engine.checkpoint import atomic_save, check_fit, load_checkpoint, load_model_weights
from regpose.errors import CheckpointError


def test_killed_write_never_replaces_last_good_checkpoint(tmp_path):
    path = tmp_path / "last.pth"
    good = {"model": {"w": torch.arange(10.0)}, "iteration": 7}
    atomic_save(good, path)
    # A second process writes a large checkpoint to the same path and is SIGKILLed mid-write.
    script = textwrap.dedent(f"""
        import torch, sys
        sys.path.insert(0, {str(__import__('pathlib').Path(__file__).resolve().parents[2])!r})
        from regpose.engine.checkpoint import atomic_save
        big = {{"model": {{"w": torch.ones(50_000_000)}}, "iteration": 8}}
        print("writing", flush=True)
        atomic_save(big, {str(path)!r})
        print("done", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    deadline = time.time() + 60
    while time.time() < deadline and not list(tmp_path.glob(".last.pth.*.tmp")):
        time.sleep(0.001)
    assert list(tmp_path.glob(".last.pth.*.tmp")), "the writer never started its temporary file"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    state = load_checkpoint(path)
    assert state["iteration"] == 7 and torch.equal(state["model"]["w"], good["model"]["w"])


def test_weights_only_loading_refuses_arbitrary_objects(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    p = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "x": Evil()}, p)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(p)


def test_mismatched_checkpoint_names_missing_unexpected_and_shape_keys():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    state = {"0.weight": torch.zeros(4, 3), "0.bias": torch.zeros(5), "2.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError) as e:
        check_fit(model, state, "ckpt.pth")
    msg = str(e.value)
    assert "\n" not in msg
    assert "2 missing [1.weight, 1.bias]" in msg
    assert "1 unexpected [2.weight]" in msg
    assert "1 shape-mismatched [0.bias (5,) vs model (4,)]" in msg
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_model_weights(model, "/nonexistent/w.pth")
