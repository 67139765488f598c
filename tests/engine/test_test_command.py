"""`regpose test`: evaluates a labelled split, and on a split without labels (COCO test-dev) writes the results
json for submission instead."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
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


def test_an_unreadable_validation_image_is_skipped_and_counted_unless_strict(tmp_path):
    """One corrupt image among four, loaded in a DataLoader worker: `regpose test` reports it in one line, evaluates
    the other three exactly as it would have, and scores them against their own ground truth; --strict stops."""
    from regpose.engine.evaluator import evaluate_model

    ann = generate(tmp_path / "val", 4, seed=3, size=(96, 96), max_people=2, progress=False)
    config = str(REPO / "configs" / "rle" / "rle_tiny_synthetic.yaml")
    common = [f"data.val.ann_files=[{ann}]", "data.val.root=", "data.val.synthetic.num_images=0",
              "train.num_workers=1", "test.flip=false", "test.batch_size=2"]
    cfg = load_config(config, common)
    model = build_model(cfg)
    weights = tmp_path / "w.pth"
    torch.save({"model": model.state_dict()}, weights)
    _, intact = evaluate_model(cfg, model, torch.device("cpu"), out_dir=tmp_path / "intact")
    bad = tmp_path / "val" / "images" / "000002.jpg"
    bad.write_bytes(bad.read_bytes()[:200])

    def run(*extra):
        return subprocess.run([sys.executable, "-m", "regpose", "test", config, "--weights", str(weights),
                               "--output-dir", str(tmp_path / "out"), *common, *extra],
                              capture_output=True, text=True, timeout=300)

    r = run()
    assert r.returncode == 0, r.stderr[-2000:]
    gt = json.loads(Path(ann).read_text())
    people = sum(1 for a in gt["annotations"] if a["num_keypoints"] > 0)
    bad_people = sum(1 for a in gt["annotations"] if a["num_keypoints"] > 0 and a["image_id"] == 2)
    assert f"skipped: cannot decode image (corrupt or unsupported format): {bad}" in r.stderr
    assert (f"skipped 1 unreadable image ({bad_people} of {people} samples); the metrics cover the other 3 images "
            f"(test.strict=true stops instead)") in r.stderr
    expected = [x for x in json.loads(Path(intact).read_text()) if x["image_id"] != 2]
    got = json.loads((tmp_path / "out" / "results_val.json").read_text())
    assert [x["image_id"] for x in got] == [x["image_id"] for x in expected]
    assert all(abs(a - b) < 1e-3 for x, y in zip(got, expected) for a, b in zip(x["keypoints"], y["keypoints"]))
    assert "AP" in json.loads((tmp_path / "out" / "metrics_val.json").read_text())

    r = run("--strict")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (f"error: cannot decode image (corrupt or unsupported format): {bad} "
                                                 f"(test.strict=true: evaluation stops at an unreadable image)")
    assert "Traceback" not in r.stderr


def test_a_split_with_nothing_to_evaluate_is_an_error_not_an_empty_submission(tmp_path):
    """Top-down evaluation with ground-truth boxes on a split without people has no sample: saying so beats
    writing an empty 'submission'."""
    from regpose.engine.evaluator import evaluation_dataset
    from regpose.errors import DataError

    ann = Path(generate(tmp_path / "val", 2, seed=3, size=(96, 96), max_people=2, progress=False))
    gt = json.loads(ann.read_text())
    unlabelled = tmp_path / "unlabelled.json"
    unlabelled.write_text(json.dumps(dict(gt, annotations=[])))
    cfg = load_config(REPO / "configs" / "rle" / "rle_tiny_synthetic.yaml",
                      [f"data.val.ann_files=[{unlabelled}]", f"data.val.image_dir={ann.parent / 'images'}"])
    with pytest.raises(DataError) as e:
        evaluation_dataset(cfg, "val")
    assert str(e.value) == (f"data.val ({unlabelled}): nothing to evaluate, the split has no samples (top-down "
                            f"evaluation with test.boxes=gt crops the annotated people; for a split without them give "
                            f"person boxes: test.boxes=detections or model)")
    cfg.data.val.ann_files = [str(ann)]
    assert len(evaluation_dataset(cfg, "val")) == sum(a["num_keypoints"] > 0 for a in gt["annotations"])
