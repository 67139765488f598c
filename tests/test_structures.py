"""PoseResult (regpose/structures.py): shapes and dtypes it enforces, empty results, concat / select / sorted with
their per-person extras, and COCO results entries that the evaluator reads back to the same people."""
from __future__ import annotations

import json

import numpy as np
import pytest

from regpose.evaluation import evaluate
from regpose.structures import PoseResult, to_coco_results


def _result(n: int, k: int = 3, seed: int = 0, **extras) -> PoseResult:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(10, 90, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (n, 2))], 1)
    kpts = np.concatenate([rng.uniform(0, 100, (n, k, 2)), rng.uniform(0, 1, (n, k, 1))], 2)
    return PoseResult(boxes, kpts, rng.uniform(0, 1, n), dict(extras))


def test_arrays_become_float32_and_inconsistent_shapes_are_refused():
    r = PoseResult([[0, 0, 1, 1]], [[[1, 2, 0.5]]], [0.9])
    assert (r.boxes.dtype, r.keypoints.dtype, r.scores.dtype) == (np.float32,) * 3
    assert r.boxes.shape == (1, 4) and r.keypoints.shape == (1, 1, 3) and r.scores.shape == (1,) and len(r) == 1
    with pytest.raises(ValueError, match="inconsistent shapes"):
        PoseResult(np.zeros((2, 4)), np.zeros((1, 17, 3)), np.zeros(2))
    with pytest.raises(ValueError, match="inconsistent shapes"):
        PoseResult(np.zeros((1, 4)), np.zeros((1, 17, 2)), np.zeros(1))
    assert len(PoseResult(np.zeros((0, 4)), np.zeros((0, 3)), np.zeros(0))) == 0     # (0, 3) -> (0, 0, 3)


def test_empty_keeps_the_keypoint_count():
    e = PoseResult.empty(14)
    assert len(e) == 0 and e.boxes.shape == (0, 4) and e.keypoints.shape == (0, 14, 3) and e.scores.shape == (0,)
    assert to_coco_results(e, image_id=3) == []


def test_concat_keeps_order_and_the_extras_every_part_has():
    a = _result(2, seed=1, track_id=np.array([7, 8]), sigma=np.zeros((2, 3, 2)))
    b = _result(3, seed=2, track_id=np.array([9, 10, 11]))
    c = PoseResult.concat([a, PoseResult.empty(3), b], num_keypoints=3)
    assert len(c) == 5
    np.testing.assert_array_equal(c.keypoints, np.concatenate([a.keypoints, b.keypoints]))
    np.testing.assert_array_equal(c.scores, np.concatenate([a.scores, b.scores]))
    assert set(c.extras) == {"track_id"}                    # 'sigma' is missing in b: not carried half-filled
    np.testing.assert_array_equal(c.extras["track_id"], [7, 8, 9, 10, 11])
    e = PoseResult.concat([PoseResult.empty(3)], num_keypoints=5)
    assert len(e) == 0 and e.keypoints.shape == (0, 5, 3)


def test_select_and_sorted_move_every_field_together():
    r = _result(4, seed=3, track_id=np.array([0, 1, 2, 3]))
    s = r.sorted()
    assert np.all(np.diff(s.scores) <= 0)
    for i, tid in enumerate(s.extras["track_id"]):
        np.testing.assert_array_equal(s.keypoints[i], r.keypoints[tid])
        np.testing.assert_array_equal(s.boxes[i], r.boxes[tid])
    kept = r.select(r.scores > np.median(r.scores))
    assert len(kept) == 2 and set(kept.extras["track_id"]) == set(np.flatnonzero(r.scores > np.median(r.scores)))
    ties = PoseResult(np.zeros((3, 4)), np.zeros((3, 1, 3)), [0.5, 0.5, 0.5], {"i": np.arange(3)}).sorted()
    np.testing.assert_array_equal(ties.extras["i"], [0, 1, 2])      # stable: equal scores keep their order


def test_coco_results_entries_and_evaluation_round_trip(tmp_path):
    """Boxes become [x, y, w, h]; predictions equal to the ground truth written through to_coco_results and a
    results file score AP 1 (the same people come back)."""
    r = _result(3, k=17, seed=4)
    entries = to_coco_results(r, image_id=785)
    assert [e["image_id"] for e in entries] == [785] * 3 and all(e["category_id"] == 1 for e in entries)
    x1, y1, x2, y2 = r.boxes[0]
    np.testing.assert_allclose(entries[0]["bbox"], [x1, y1, x2 - x1, y2 - y1], atol=0.01)
    np.testing.assert_allclose(np.array(entries[1]["keypoints"]).reshape(17, 3), r.keypoints[1], atol=1e-4)
    assert entries[2]["score"] == pytest.approx(float(r.scores[2]))

    anns = [{"id": i + 1, "image_id": 785, "category_id": 1, "iscrowd": 0, "num_keypoints": 17,
             "bbox": e["bbox"], "area": e["bbox"][2] * e["bbox"][3] * 0.6,
             "keypoints": [v for x, y, _ in np.array(e["keypoints"]).reshape(17, 3) for v in (x, y, 2)]}
            for i, e in enumerate(entries)]
    gt = {"images": [{"id": 785, "file_name": "000000000785.jpg", "width": 200, "height": 200}], "annotations": anns,
          "categories": [{"id": 1, "name": "person", "keypoints": [str(j) for j in range(17)], "skeleton": []}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(entries))
    metrics = evaluate(tmp_path / "gt.json", tmp_path / "res.json", "coco")
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AR"] == pytest.approx(1.0)
