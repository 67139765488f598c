"""Checkpoints: atomic replacement survives a killed writer; weights-only loading; mismatch reports by name."""
from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from regpose.checkpoint import (atomic_save, check_fit, load_checkpoint, load_model_weights,
                                remove_stale_temporaries)
from regpose.errors import CheckpointError


def test_killed_write_never_replaces_last_good_checkpoint(tmp_path):
    path = tmp_path / "last.pth"
    good = {"model": {"w": torch.arange(10.0)}, "iteration": 7}
    atomic_save(good, path)
    # A second process writes a large checkpoint to the same path and is SIGKILLed mid-write.
    script = textwrap.dedent(f"""
        import torch, sys
        sys.path.insert(0, {str(__import__('pathlib').Path(__file__).resolve().parents[1])!r})
        from regpose.checkpoint import atomic_save
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


def test_weights_only_loading_refuses_arbitrary_objects_and_says_why(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    p = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "x": Evil()}, p)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(p)
    assert str(e.value) == (f"{p}: checkpoint refused: the file contains code or non-tensor objects (print), which "
                            f"are never loaded (a checkpoint must hold only tensors, numbers, strings and containers "
                            f"of them)")   # and never the advice to load it unsafely (weights_only=False)


@pytest.mark.parametrize("content, reason", [
    (b"hello world\n", "not a PyTorch file (a zip archive or pickle was expected; it starts with b'hello wo')"),
    (b"", "the file is empty"),
    ("truncated", "truncated or corrupt (PytorchStreamReader failed reading zip archive: failed finding central "
                  "directory.)"),
])
def test_unreadable_checkpoints_say_what_is_wrong(tmp_path, content, reason):
    p = tmp_path / "w.pth"
    if content == "truncated":
        torch.save({"model": {"w": torch.zeros(1000)}}, p)
        p.write_bytes(p.read_bytes()[:500])
    else:
        p.write_bytes(content)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(p)
    assert str(e.value) == f"{p}: cannot read checkpoint: {reason}"


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_checkpoints_honour_the_umask_like_every_other_file(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_save({"w": torch.zeros(2)}, tmp_path / "last.pth")
        (tmp_path / "metrics.jsonl").write_text("{}")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "last.pth").stat().st_mode)
    assert mode == 0o666 & ~umask == stat.S_IMODE((tmp_path / "metrics.jsonl").stat().st_mode)


def test_stale_temporaries_of_the_named_files_are_removed(tmp_path):
    stale = [tmp_path / ".last.pth.k2j3h4.tmp", tmp_path / ".model_0000020.pth.0a1b2c3d4e5f.tmp"]
    others = [tmp_path / ".notes.txt.abc.tmp", tmp_path / "last.pth", tmp_path / ".last.pth.swp"]
    for p in stale + others:
        p.write_bytes(b"x")
    removed = remove_stale_temporaries(tmp_path, r"last|best|model_final|model_\d+")
    assert sorted(removed) == sorted(stale) and all(p.exists() for p in others) and not any(p.exists() for p in stale)


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
