"""Top-down pipeline: rescoring and OKS-NMS against literal ports of mmpose, box sources, and end-to-end
inference on the real COCO samples with the detections file there."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from regpose.data.keypoints import COCO_SIGMAS
from regpose.data.datasets import read_image
from regpose.inference.boxes import DetectionBoxes, GroundTruthBoxes
from regpose.inference.predictor import build_box_source
from regpose.inference.runner import PoseRunner, write_results
from regpose.ops import oks_nms, pairwise_oks, rescore, topdown_finalize
from regpose.structures import PoseResult
from conftest import REAL

COCO = REAL / "coco"


def _mmpose_oks_iou(g, d, a_g, a_d, sigmas):
    """mmpose 0.x ``oks_iou`` (vis_thr=None), literally."""
    vars_ = (sigmas * 2) ** 2
    xg, yg = g[0::3], g[1::3]
    ious = np.zeros(len(d))
    for n_d in range(len(d)):
        xd, yd = d[n_d, 0::3], d[n_d, 1::3]
        e = ((xd - xg) ** 2 + (yd - yg) ** 2) / vars_ / ((a_g + a_d[n_d]) / 2 + np.spacing(1)) / 2
        ious[n_d] = np.sum(np.exp(-e)) / len(e) if len(e) != 0 else 0.0
    return ious


def _mmpose_oks_nms(kpts, scores, areas, sigmas, thr):
    """mmpose 0.x ``oks_nms``, literally (order by scores.argsort()[::-1])."""
    order = scores.argsort()[::-1]
    flat = kpts.reshape(len(kpts), -1)
    keep = []
    while len(order) > 0:
        i = order[0]
        keep.append(i)
        ovr = _mmpose_oks_iou(flat[i], flat[order[1:]], areas[i], areas[order[1:]], sigmas)
        order = order[np.where(ovr <= thr)[0] + 1]
    return np.asarray(keep)


def _scene(seed, n=12):
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 300, (4, 1, 2)) + rng.normal(0, 30, (4, 17, 2))
    people = base[rng.integers(0, 4, n)] + rng.normal(0, rng.choice([0.5, 3.0, 15.0], (n, 1, 1)), (n, 17, 2))
    kp = np.concatenate([people, rng.uniform(0, 1, (n, 17, 1))], -1)
    return kp, rng.uniform(0, 3, n), rng.uniform(2000, 40000, n)


@pytest.mark.parametrize("seed", range(6))
def test_oks_nms_equals_mmpose(seed):
    kp, scores, areas = _scene(seed)
    for thr in (0.5, 0.9):
        ours = oks_nms(kp, scores, areas, COCO_SIGMAS, thr)
        assert ours.tolist() == _mmpose_oks_nms(kp, scores, areas, COCO_SIGMAS, thr).tolist()
    oks = pairwise_oks(kp, areas, COCO_SIGMAS)
    for i in range(len(kp)):
        np.testing.assert_allclose(oks[i], _mmpose_oks_iou(kp[i].reshape(-1), kp.reshape(len(kp), -1), areas[i],
                                                           areas, COCO_SIGMAS), rtol=1e-12)


def test_rescore_and_finalize():
    kp, _, areas = _scene(0, n=3)
    kp[1] = kp[0] + 0.1                                # near-duplicate of person 0
    res = PoseResult(np.zeros((3, 4)), kp, np.zeros(3),
                     {"box_score": np.array([0.9, 0.5, 0.2], np.float32), "area": areas.astype(np.float32)})
    r = rescore(res)
    expected = np.array([0.9, 0.5, 0.2]) + kp[..., 2].mean(-1) + kp[..., 2].max(-1)
    np.testing.assert_allclose(r.scores, expected, rtol=1e-6)
    final = topdown_finalize(res, COCO_SIGMAS, 0.9)
    keep_dup = 0 if expected[0] >= expected[1] else 1
    assert len(final) == 2 and np.allclose(final.scores, np.sort(expected[[keep_dup, 2]])[::-1], rtol=1e-6)


def test_box_sources_read_the_real_files():
    from regpose.data.config import SplitConfig
    from regpose.data.datasets import load_records

    det = DetectionBoxes(COCO / "test_coco_det_AP_H_56.json", score_threshold=0.5)
    raw = json.loads((COCO / "test_coco_det_AP_H_56.json").read_text())
    n785 = sum(1 for d in raw if d["image_id"] == 785 and d["score"] >= 0.5)
    assert det(785).shape == (n785, 5) and (det(785)[:, 4] >= 0.5).all()
    assert det(123456).shape == (0, 5)
    records = load_records(SplitConfig(ann_files=[str(COCO / "test_coco.json")]), "coco")
    gt = GroundTruthBoxes(records)
    total = sum(len(gt(r.image_id)) for r in records)
    assert 0 < total <= 14 and (gt(785)[:, 4] == 1).all()


def _tiny_cfg(tmp_path, **test):
    from regpose.config import load_config

    raw = {"method": "poseur",
           "model": {"backbone": {"name": "resnet18", "kwargs": {"stem_width": 16, "channels": [16, 32, 64, 128]}},
                     "embed_dim": 64, "num_decoder_layers": 2, "self_attn_heads": 4, "num_points": 2, "ffn_dim": 128},
           "data": {"input_size": [96, 128]},
           "test": {"batch_size": 8, "boxes": "detections", "detections": str(COCO / "test_coco_det_AP_H_56.json"),
                    **test},
           "output_dir": str(tmp_path)}
    return load_config(raw)


def test_inference_on_real_images_writes_valid_results(tmp_path):
    from pycocotools.coco import COCO as CocoApi
    from regpose.models import build_model

    cfg = _tiny_cfg(tmp_path, flip=True, det_score_threshold=0.3)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    boxes = build_box_source(cfg)
    files = sorted(COCO.glob("*.jpg"))
    ids = [boxes.image_id_for(f) for f in files]
    people = PoseRunner(model, cfg)([read_image(f) for f in files], ids, [str(f) for f in files],
                                    [boxes(i) for i in ids])
    results = dict(zip(ids, people))
    assert sorted(results) == [785, 40083, 196141, 197388]
    for image_id, res in results.items():
        n_boxes = len(boxes(image_id))
        assert 0 < len(res) <= n_boxes and res.keypoints.shape[1:] == (17, 3)
        assert np.isfinite(res.keypoints).all() and (np.diff(res.scores) <= 0).all()
        det = boxes(image_id)
        det_xyxy = np.concatenate([det[:, :2], det[:, :2] + det[:, 2:4]], 1)
        match = np.abs(res.boxes[:, None] - det_xyxy[None]).max(-1).min(1)
        assert match.max() < 1e-3          # every person keeps its detection box, in image pixels
    out = write_results(results, tmp_path / "results.json")
    entries = json.loads(out.read_text())
    assert entries and all(len(e["keypoints"]) == 51 for e in entries)
    gt = CocoApi(str(COCO / "test_coco.json"))
    dt = gt.loadRes(str(out))
    assert len(dt.getAnnIds()) == len(entries)


def test_predictor_keypoints_land_in_their_boxes_neighbourhood(tmp_path):
    """Decoded keypoints are in image pixels: a crop predicts in [0, 1] -> the padded box around each detection."""
    cfg = _tiny_cfg(tmp_path)
    from regpose.models import build_model

    model = build_model(cfg).eval()
    img = np.zeros((240, 320, 3), np.uint8)
    boxes = np.array([[100.0, 50.0, 60.0, 120.0, 0.8]])
    res = PoseRunner(model, cfg)([img], boxes=[boxes])[0]
    # crop extends 1.25 x the aspect-fixed box (90 x 120 -> 112.5 x 150) around the centre (130, 110); a black
    # image is a constant crop of -mean / std
    crop = (-torch.tensor([0.485, 0.456, 0.406]) / torch.tensor([0.229, 0.224, 0.225])).view(1, 3, 1, 1)
    with torch.no_grad():
        mu, sigma = model(crop.expand(1, 3, 128, 96).contiguous())
    expected = np.stack([130 - 56.25 + mu[0, :, 0].numpy() * 112.5, 110 - 75 + mu[0, :, 1].numpy() * 150], -1)
    np.testing.assert_allclose(res.keypoints[0, :, :2], expected, atol=0.05)


def test_evaluator_and_predictor_give_the_same_people(tmp_path):
    """One pipeline (issue 20.1): ``regpose test`` (the evaluator: the split's dataset through a DataLoader, people
    gathered per image) and :class:`Predictor` (pictures in memory, another batch size) give the same people for
    the same images and detections."""
    from regpose import Predictor
    from regpose.data.config import SplitConfig
    from regpose.engine.evaluator import evaluate_model
    from regpose.models import build_model
    from regpose.structures import to_coco_results

    cfg = _tiny_cfg(tmp_path, flip=True, det_score_threshold=0.9)
    cfg.data.val = SplitConfig(ann_files=[str(COCO / "test_coco.json")])
    cfg.train.num_workers = 0
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    torch.save({"model": model.state_dict()}, tmp_path / "weights.pth")
    metrics, path = evaluate_model(cfg, model, torch.device("cpu"), out_dir=tmp_path / "test")
    evaluated = json.loads(path.read_text())

    predictor = Predictor(cfg, tmp_path / "weights.pth", device="cpu", batch_size=3)
    files = sorted(COCO.glob("*.jpg"))
    predicted = [e for f, image_id, r in zip(files, predictor.image_ids(files), predictor.predict_batch(files))
                 for e in to_coco_results(r, image_id)]
    assert metrics is not None and len(evaluated) == len(predicted) > 4
    order = lambda entries: sorted(entries, key=lambda e: (e["image_id"], -e["score"]))   # noqa: E731
    for a, b in zip(order(evaluated), order(predicted)):
        assert a["image_id"] == b["image_id"]
        np.testing.assert_allclose(a["keypoints"], b["keypoints"], atol=1e-3)
        np.testing.assert_allclose([a["score"], *a["bbox"]], [b["score"], *b["bbox"]], atol=1e-4)
