"""MPII PCKh against a literal transcription of the official / mmpose computation."""
import json

import numpy as np
import pytest

from conftest import REAL
from regpose.data.datasets import mpii_image_ids
from regpose.data.synthetic import generate
from regpose.errors import DataError
from regpose.evaluation import evaluate, format_metrics

MPII = REAL / "mpii" / "test_mpii.json"


def official_pckh(pred_1based, gt_1based, vis, headsizes, thr):
    """mmpose ``_report_metric`` / the MATLAB evaluation: per-joint PCKh, pelvis and thorax masked from the mean."""
    uv_err = np.linalg.norm(pred_1based - gt_1based, axis=2).T                 # (16, N)
    scaled = uv_err / headsizes[None]
    jnt_visible = vis.T
    jnt_count = np.sum(jnt_visible, axis=1)
    less = (scaled <= thr) * jnt_visible
    pck = 100.0 * np.sum(less, axis=1) / jnt_count
    pck = np.ma.array(pck, mask=False)
    pck.mask[6:8] = True
    cnt = np.ma.array(jnt_count, mask=False)
    cnt.mask[6:8] = True
    ratio = cnt / np.sum(cnt).astype(np.float64)
    return pck, float(np.sum(pck * ratio))


def test_matches_the_official_formula_with_head_boxes(tmp_path):
    path = generate(tmp_path / "mp", 25, seed=4, fmt="mpii", progress=False)
    gt = json.loads(path.read_text())
    j = np.asarray([p["joints"] for p in gt], np.float64)
    vis = np.asarray([p["joints_vis"] for p in gt]) > 0
    hb = np.asarray([p["headbox"] for p in gt], np.float64)
    head = 0.6 * np.linalg.norm(hb[:, 2:] - hb[:, :2], axis=1)
    rng = np.random.default_rng(0)
    pred = j + rng.normal(0, 1, j.shape) * head[:, None, None] * rng.choice([0.05, 0.3, 1.0], (len(j), 16, 1))
    m = evaluate(path, pred - 1.0, "mpii")                                     # ours take 0-based pixels
    for thr, key in ((0.5, "PCKh"), (0.1, "PCKh@0.1")):
        per_joint, mean = official_pckh(pred, j, vis, head, thr)
        assert 100 * m[key] == pytest.approx(mean, abs=1e-9)
    per_joint, _ = official_pckh(pred, j, vis, head, 0.5)
    assert 100 * m["Head"] == pytest.approx(per_joint[9])
    assert 100 * m["Wrist"] == pytest.approx(0.5 * (per_joint[10] + per_joint[15]))
    assert 100 * m["PCKh/l_ankle"] == pytest.approx(per_joint[5])
    # The same predictions as a shuffled COCO-style results list are matched back to their people.
    ids = mpii_image_ids([p["image"] for p in gt])
    res = [{"image_id": ids[p["image"]], "score": 1.0,
            "keypoints": np.concatenate([q - 1.0, np.ones((16, 1))], 1).reshape(-1).tolist()}
           for p, q in zip(gt, pred)]
    res = [res[i] for i in rng.permutation(len(res))]
    m2 = evaluate(path, res, "mpii")
    assert m2["PCKh"] == pytest.approx(m["PCKh"]) and m2["PCKh@0.1"] == pytest.approx(m["PCKh@0.1"])


def test_real_file_without_head_boxes_uses_the_head_segment():
    gt = json.loads(MPII.read_text())
    j = np.asarray([p["joints"] for p in gt], np.float64) - 1
    seg = np.linalg.norm(j[:, 9] - j[:, 8], axis=1)
    pred = j.copy()
    pred[:, 15, 0] += 0.45 * seg                                              # within 0.5, beyond 0.1
    pred[:, 10, 0] += 0.55 * seg                                              # beyond 0.5
    m = evaluate(MPII, pred, "mpii")
    assert m["PCKh/l_wrist"] == 1.0 and m["PCKh/r_wrist"] == 0.0 and m["Wrist"] == 0.5
    vis = np.asarray([p["joints_vis"] for p in gt]) > 0
    counted = vis.copy()
    counted[:, 6:8] = False
    assert m["PCKh@0.1"] == pytest.approx(1 - (counted[:, 15].sum() + counted[:, 10].sum()) / counted.sum())
    assert "Ankle" in format_metrics(m, "mpii") and "l_wrist" in format_metrics(m, "mpii")


def test_missing_people_count_as_wrong_and_bad_results_error():
    gt = json.loads(MPII.read_text())
    ids = mpii_image_ids([p["image"] for p in gt])
    one = [{"image_id": ids[gt[0]["image"]], "keypoints": np.concatenate(
        [np.asarray(gt[0]["joints"]) - 1, np.ones((16, 1))], 1).reshape(-1).tolist()}]
    m = evaluate(MPII, one, "mpii")
    vis = np.asarray([p["joints_vis"] for p in gt]) > 0
    vis[:, 6:8] = False
    assert m["PCKh"] == pytest.approx(vis[0].sum() / vis.sum())
    with pytest.raises(DataError, match="entry 0 .*expected 48 keypoint values"):
        evaluate(MPII, [dict(one[0], keypoints=[1.0] * 51)], "mpii")
    with pytest.raises(DataError, match="image_id 7 is not in the ground truth"):
        evaluate(MPII, [dict(one[0], image_id=7)], "mpii")
    with pytest.raises(DataError, match=r"shape \(5, 16, 2 or 3\)"):
        evaluate(MPII, np.zeros((4, 16, 2)), "mpii")
