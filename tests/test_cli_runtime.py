"""What every computing command shares: the torch thread count (``--threads``, else the documented default rule,
said in the log), progress as plain periodic lines when stderr is not a terminal (no carriage-return floods), dotted
overrides after ``--scales``, and a hint when a file of another keypoint layout is evaluated."""
from __future__ import annotations

import json
import re

import pytest
import torch

from regpose.cli import main
from regpose.config import load_config
from regpose.models import build_model
from regpose.threads import available_cores, default_threads
from conftest import REAL, REPO

CONFIG = str(REPO / "configs" / "rle" / "rle_tiny_synthetic.yaml")


def test_default_thread_rule(monkeypatch):
    cores = available_cores()
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_threads() == cores
    assert default_threads(1) == max(1, cores - 1)
    assert default_threads(cores + 3) == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")          # torchrun --nproc_per_node=2: each process its half
    assert default_threads(0) == max(1, cores // 2)


def test_test_command_threads_overrides_after_scales_and_plain_progress(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "val"), "--num-images", "3", "--seed", "5", "--size", "96x96",
                 "--max-people", "2"]) == 0
    ann = tmp_path / "val" / "annotations.json"
    data = [f"data.val.ann_files=[{ann}]", f"data.val.image_dir={tmp_path / 'val' / 'images'}", "data.val.root=",
            "data.val.synthetic.num_images=0", "train.num_workers=0"]
    weights = tmp_path / "w.pth"
    torch.save({"model": build_model(load_config(CONFIG, data)).state_dict()}, weights)
    torch.set_num_threads(2)
    # every override after --scales: the split exists only if they reach the config
    code = main(["test", CONFIG, "--weights", str(weights), "--output-dir", str(tmp_path / "out"), "--threads", "1",
                 "--scales", "1", "test.flip=false", *data])
    err = capsys.readouterr().err
    assert code == 0, err[-2000:]
    assert torch.get_num_threads() == 1 and "torch threads: 1 (--threads)" in err
    assert json.loads((tmp_path / "out" / "metrics_val.json").read_text())["AP"] >= 0
    assert "\r" not in err                                   # stderr is not a terminal here: no bar redraws
    # one plain line at the start and one at the end (runs shorter than LOG_PERIOD_SECONDS print no others)
    assert re.search(r"^synth val: 0/3 \[.*\n^synth val: 3/3 \[.*\] 100%$", err, re.M)
    assert re.search(r"^eval: (\d+)/\1 \[.*\] 100%$", err, re.M)


def test_bench_default_threads_follow_the_rule_and_are_logged(tmp_path, capsys, monkeypatch):
    out = tmp_path / "bench.json"
    bench = ["bench", CONFIG, "--runs", "1", "--warmup", "0", "--no-flops", "--json-out", str(out)]
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert main(bench) == 0
    err = capsys.readouterr().err
    n = default_threads(0)
    assert f"torch threads: {n} (default: {available_cores()} cores - 0 data workers" in err
    assert json.loads(out.read_text())["threads"] == n == torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")             # what the user set explicitly wins over the rule
    torch.set_num_threads(2)
    assert main(bench) == 0
    assert "torch threads: 1 (OMP_NUM_THREADS)" in capsys.readouterr().err
    assert json.loads(out.read_text())["threads"] == 1 == torch.get_num_threads()


def test_a_file_of_another_keypoint_layout_gets_a_hint(tmp_path, capsys):
    results = tmp_path / "crowdpose_results.json"
    results.write_text(json.dumps([{"image_id": 785, "category_id": 1, "score": 0.9, "keypoints": [1.0] * 42}]))
    code = main(["evaluate", "--gt", str(REAL / "coco" / "test_coco.json"), "--results", str(results)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "expected 51 keypoint values" in err and "14 keypoints is the crowdpose layout" in err
    assert "--dataset crowdpose" in err


@pytest.mark.parametrize("argv", [["train", CONFIG], ["test", CONFIG, "--weights", "w"], ["demo"],
                                  ["bench", CONFIG], ["infer", CONFIG, "x.jpg", "--weights", "w", "--out", "o"]])
def test_every_computing_command_takes_threads(argv):
    from regpose.cli import build_parser

    args, _ = build_parser().parse_known_args([*argv, "--threads", "3"])
    assert args.threads == 3

