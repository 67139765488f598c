"""Error analysis: per-joint similarity from hand-computed OKS terms, best matches equal to pycocotools' OKS, and
oracle ceilings that remove exactly the error they name."""
import contextlib
import copy
import io
import json
import subprocess
import sys

import numpy as np
import pytest

from bench.scenes import random_scene
from regpose.data.keypoints import COCO_SIGMAS
from regpose.errors import DataError
from regpose.evaluation.analysis import analyse_keypoint_errors, format_analysis

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def labelled(gt):
    return [a for a in gt["annotations"] if not a["iscrowd"] and a["num_keypoints"] > 0]


def exact_predictions(gt) -> list:
    return [{"image_id": a["image_id"], "category_id": 1, "score": 0.9,
             "keypoints": [float(t) if i % 3 != 2 else 1.0 for i, t in enumerate(a["keypoints"])]}
            for a in labelled(gt)]


@pytest.fixture(scope="module")
def scene():
    gt, _ = random_scene(num_images=40, seed=3)
    return gt


def test_exact_predictions_score_one_everywhere(scene):
    rep = analyse_keypoint_errors(scene, exact_predictions(scene))
    assert rep["metrics"]["AP"] == pytest.approx(1.0) and rep["oks"]["mean"] == pytest.approx(1.0)
    assert rep["matched"] == rep["people"] == len(labelled(scene))
    assert all(r["similarity"] == pytest.approx(1.0) for r in rep["per_joint"].values() if r["labelled"])
    assert rep["ceilings"]["ranked by true OKS"] == pytest.approx(1.0)


def test_one_shifted_joint_costs_exactly_its_oks_term(scene):
    shift = 3.0
    res = exact_predictions(scene)
    for r in res:
        r["keypoints"][9 * 3] += shift                          # left_wrist, 3 px to the right
    rep = analyse_keypoint_errors(scene, res)
    j = rep["per_joint"]["left_wrist"]
    anns = [a for a in labelled(scene) if a["keypoints"][9 * 3 + 2] > 0]
    want = np.mean([np.exp(-shift ** 2 / (2 * COCO_SIGMAS[9]) ** 2 / (a["area"] + np.spacing(1)) / 2) for a in anns])
    assert j["labelled"] == len(anns) and j["similarity"] == pytest.approx(want, rel=1e-9)
    assert j["median_error"] == pytest.approx(np.median([shift / np.sqrt(a["area"]) for a in anns]), rel=1e-6)
    assert all(r["similarity"] == pytest.approx(1.0) for n, r in rep["per_joint"].items()
               if n != "left_wrist" and r["labelled"])
    assert rep["metrics"]["AP"] < 1.0
    assert j["AP_if_exact"] == pytest.approx(1.0)                                      # the one error removed
    assert rep["per_joint"]["nose"]["AP_if_exact"] == pytest.approx(rep["metrics"]["AP"])  # nothing to remove


def test_occluded_oracle_removes_only_occluded_errors(scene):
    rng = np.random.default_rng(0)
    res = exact_predictions(scene)
    for r, a in zip(res, labelled(scene)):
        k = np.asarray(r["keypoints"]).reshape(17, 3)
        occluded = np.asarray(a["keypoints"]).reshape(17, 3)[:, 2] == 1
        k[occluded, :2] += rng.normal(0, 0.3 * np.sqrt(a["area"]), (occluded.sum(), 2))
        r["keypoints"] = k.reshape(-1).tolist()
    rep = analyse_keypoint_errors(scene, res)
    assert rep["metrics"]["AP"] < 0.9
    assert rep["ceilings"]["occluded keypoints exact"] == pytest.approx(1.0)
    vis = [r["similarity_visible"] for r in rep["per_joint"].values() if r["similarity_visible"] is not None]
    occ = [r["similarity_occluded"] for r in rep["per_joint"].values() if r["similarity_occluded"] is not None]
    assert np.allclose(vis, 1.0) and max(occ) < 0.9
    assert rep["strata"]["all labelled keypoints visible"]["mean_oks"] == pytest.approx(1.0)
    assert rep["strata"]["some keypoints occluded"]["mean_oks"] < 0.9


def test_best_match_oks_equals_pycocotools(tmp_path):
    """Each labelled ground truth's best OKS equals the maximum of pycocotools' computeOks over the image's
    predictions (images with at most 20 predictions, pycocotools' cut)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    gt, res = random_scene(num_images=60, seed=5, zero_score_prob=0.0)
    rep_oks = {}
    from regpose.evaluation.analysis import _best_matches
    from regpose.evaluation.coco import PROTOCOLS, _DT, _GT
    g = _GT(gt, "gt", PROTOCOLS["coco"])
    d = _DT(res, "res", g, PROTOCOLS["coco"])
    best_dt, best_oks, *_ = _best_matches(g, d, (COCO_SIGMAS * 2) ** 2)
    for i, a in enumerate(gt["annotations"]):
        if best_dt[i] >= 0:
            rep_oks[a["id"]] = best_oks[i]
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    with contextlib.redirect_stdout(io.StringIO()):
        c = COCO(str(path))
        e = COCOeval(c, c.loadRes(copy.deepcopy(res)), "keypoints")
        e.params.imgIds = sorted(c.getImgIds())
        e._prepare()
    checked = 0
    for img in e.params.imgIds:
        dts = e._dts[img, 1]
        if not dts or len(dts) > 20:
            continue
        ious = e.computeOks(img, 1)
        gts = e._gts[img, 1]
        for gi, a in enumerate(gts):
            if a["id"] in rep_oks:
                assert rep_oks[a["id"]] == pytest.approx(np.max(np.asarray(ious)[:, gi]), abs=1e-12)
                checked += 1
    assert checked > 50


def test_ranking_oracle_never_loses_and_report_formats(scene):
    gt, res = random_scene(num_images=40, seed=4)
    rep = analyse_keypoint_errors(gt, res)
    assert rep["ceilings"]["ranked by true OKS"] >= rep["metrics"]["AP"] - 1e-9
    text = format_analysis(rep)
    assert "AP if exact" in text and "ranked by true OKS" in text and len(text.splitlines()) > 25


def test_bad_results_are_one_line_errors(scene):
    res = exact_predictions(scene)
    res[2]["keypoints"] = res[2]["keypoints"][:-3]
    with pytest.raises(DataError, match="entry 2.*expected 51 keypoint values"):
        analyse_keypoint_errors(scene, res)
    with pytest.raises(DataError, match="supports"):
        analyse_keypoint_errors(scene, exact_predictions(scene), dataset="mpii")


def test_errors_name_the_files_given(scene, tmp_path):
    res = exact_predictions(scene)
    res[1]["score"] = None
    (tmp_path / "gt.json").write_text(json.dumps(scene))
    (tmp_path / "res.json").write_text(json.dumps(res))
    with pytest.raises(DataError) as e:
        analyse_keypoint_errors(tmp_path / "gt.json", tmp_path / "res.json")
    assert str(e.value) == f"{tmp_path / 'res.json'}: entry 1 (image_id {res[1]['image_id']}): score is null " \
                           f"(finite numbers expected)"


def test_cli_writes_the_report(scene, tmp_path):
    (tmp_path / "gt.json").write_text(json.dumps(scene))
    (tmp_path / "res.json").write_text(json.dumps(exact_predictions(scene)))
    out = subprocess.run([sys.executable, "-m", "regpose", "analyze", "--gt", str(tmp_path / "gt.json"),
                          "--results", str(tmp_path / "res.json"), "--json-out", str(tmp_path / "rep.json")],
                         capture_output=True, text=True, check=True)
    assert "AP ceilings" in out.stdout
    assert json.loads((tmp_path / "rep.json").read_text())["metrics"]["AP"] == pytest.approx(1.0)
