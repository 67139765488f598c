"""`regpose test`: evaluates a labelled split, and on a split without labels (COCO test-dev) writes the results
json for submission instead."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from regpose.config import load_config
from regpose.data.synthetic import generate
from regpose.models import build_model

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs" / "directpose" / "directpose_r18_synthetic.yaml")


def test_test_command_on_labelled_and_unlabelled_splits(tmp_path):
    ann = generate(tmp_path / "val", 3, seed=5, size=(128, 128), max_people=3, progress=False)
    gt = json.loads(Path(ann).read_text())
    testdev = tmp_path / "test_dev.json"
    testdev.write_text(json.dumps({"images": gt["images"], "categories": gt["categories"]}))
    common = [f"data.train.root={tmp_path / 'val'}", "data.val.root=", "test.score_threshold=0.0",
              "model.pre_nms_thresh=0.0",
              "train.num_workers=0"]
    cfg = load_config(CONFIG, common + [f"data.val.ann_files=[{ann}]"])
    weights = tmp_path / "w.pth"
    torch.save({"model": build_model(cfg).state_dict()}, weights)

    def run(ann_file: Path, out: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "regpose", "test", CONFIG, "--weights", str(weights),
                               "--output-dir", str(out), *common, f"data.val.ann_files=[{ann_file}]",
                               f"data.val.image_dir={tmp_path / 'val' / 'images'}"],
                              capture_output=True, text=True, timeout=300)

    r = run(Path(ann), tmp_path / "labelled")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "AP" in r.stdout and (tmp_path / "labelled" / "metrics_val.json").is_file()
    r = run(testdev, tmp_path / "testdev")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "has no annotations" in r.stderr and not (tmp_path / "testdev" / "metrics_val.json").exists()
    results = json.loads((tmp_path / "testdev" / "results_val.json").read_text())
    assert isinstance(results, list) and results, "random weights still give people above threshold 0"
    assert {res["image_id"] for res in results} <= {im["id"] for im in gt["images"]}
    assert all(len(res["keypoints"]) == 17 * 3 for res in results)
