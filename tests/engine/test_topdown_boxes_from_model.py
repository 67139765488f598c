"""Top-down evaluation with person boxes from a regpose detector model (``test.boxes: model``)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from regpose.cli.show_data import show_data
from regpose.config import load_config
from regpose.data.datasets import ensure_synthetic
from regpose.engine.evaluator import evaluate_model
from regpose.models import build_model

REPO = Path(__file__).resolve().parents[2]


def _rle_with_detector_boxes(tmp_path):
    """The tiny RLE config evaluating on 2 synthetic images with boxes from a random DirectPose detector."""
    val = [f"data.val.root={tmp_path / 'val'}", "data.val.synthetic.num_images=2", "data.val.synthetic.size=[128,128]"]
    det_cfg = tmp_path / "detector.yaml"
    det_cfg.write_text(yaml.safe_dump({"base": str(REPO / "configs/directpose/directpose_r18_synthetic.yaml"),
                                       "model": {"pre_nms_thresh": 0.0, "pre_nms_topk": 5}}))
    det = load_config(det_cfg, val)
    det_weights = tmp_path / "det.pth"
    torch.save({"model": build_model(det).state_dict()}, det_weights)

    cfg = load_config(REPO / "configs/rle/rle_tiny_synthetic.yaml",
                      [*val, "test.boxes=model", f"test.detector_config={det_cfg}",
                       f"test.detector_weights={det_weights}", "train.num_workers=0", "test.flip=false"])
    ensure_synthetic(cfg.data.val, "coco")
    return cfg


def test_topdown_evaluation_takes_boxes_from_a_detector_model(tmp_path):
    cfg = _rle_with_detector_boxes(tmp_path)
    model = build_model(cfg)
    metrics, res_path = evaluate_model(cfg, model, torch.device("cpu"), out_dir=tmp_path / "out")
    results = json.loads(Path(res_path).read_text())
    assert metrics is not None and "AP" in metrics
    # one pose per detector box (then OKS-NMS), every box inside its image
    gt = json.loads((tmp_path / "val" / "annotations.json").read_text())
    assert results and {r["image_id"] for r in results} <= {im["id"] for im in gt["images"]}
    for r in results:
        x, y, w, h = r["bbox"]
        assert w > 0 and h > 0 and -1 <= x <= 128 and -1 <= y <= 128


def test_show_data_of_a_validation_split_with_detector_boxes(tmp_path):
    """show-data computes the detector's boxes before building the dataset, as the evaluator does (the data layer
    refuses to run a model): one rendered crop per detector box, up to the number asked."""
    cfg = _rle_with_detector_boxes(tmp_path)
    paths = show_data(cfg, tmp_path / "shown", num_samples=3, split="val")
    assert len(paths) == 3 and all(p.is_file() and p.stat().st_size > 0 for p in paths)
