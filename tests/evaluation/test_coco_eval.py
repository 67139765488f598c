"""The OKS evaluator equals pycocotools (COCO) and xtcocotools (OCHuman, CrowdPose keypoints_crowd) statistic for
statistic, on the real annotation files and on random scenes, and rejects bad results with one-line errors."""
import contextlib
import copy
import io
import json

import numpy as np
import pytest

from conftest import REAL
from bench.scenes import random_scene
from regpose.data.keypoints import CROWDPOSE_SIGMAS
from regpose.errors import DataError
from regpose.evaluation import COCO_KEYS, CROWDPOSE_KEYS, evaluate, format_metrics
from regpose.evaluation.oks import coco_oks

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def reference(gt: dict, res: list, dataset: str, tmp_path, sigmas=None) -> list:
    """Statistics of the reference tool (fresh copies: the tools mutate their inputs); ``sigmas``: another keypoint
    layout's OKS constants (pycocotools ``params.kpt_oks_sigmas``)."""
    gt_path = tmp_path / "gt_ref.json"
    gt_path.write_text(json.dumps(gt))
    with contextlib.redirect_stdout(io.StringIO()):
        if dataset == "coco":
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval
            c = COCO(str(gt_path))
            e = COCOeval(c, c.loadRes(copy.deepcopy(res)), "keypoints")
            if sigmas is not None:
                e.params.kpt_oks_sigmas = np.asarray(sigmas)
        else:
            from xtcocotools.coco import COCO
            from xtcocotools.cocoeval import COCOeval
            c = COCO(str(gt_path))
            d = c.loadRes(copy.deepcopy(res))
            e = COCOeval(c, d, "keypoints_crowd", CROWDPOSE_SIGMAS, use_area=False) if dataset == "crowdpose" \
                else COCOeval(c, d, "keypoints")
        e.evaluate()
        e.accumulate()
        e.summarize()
    return list(e.stats)


def check(gt, res, dataset, tmp_path):
    ours = evaluate(copy.deepcopy(gt), copy.deepcopy(res), dataset)
    keys = CROWDPOSE_KEYS if dataset == "crowdpose" else COCO_KEYS
    assert list(ours) == list(keys)
    ref = reference(gt, res, dataset, tmp_path)
    for k, r in zip(keys, ref):
        assert ours[k] == pytest.approx(r, abs=1e-6), (k, ours[k], r)
    return ours


def predictions_from_gt(gt: dict, seed: int, k: int) -> list:
    """Noisy, duplicated, missing and false-positive predictions around the real annotations."""
    rng = np.random.default_rng(seed)
    res = []
    sizes = {im["id"]: (im["width"], im["height"]) for im in gt["images"]}
    for a in gt["annotations"]:
        kp = np.asarray(a["keypoints"], np.float64).reshape(k, 3)
        if a.get("iscrowd") or rng.random() < 0.15:
            continue
        scale = np.sqrt(a["bbox"][2] * a["bbox"][3])
        for _ in range(1 + int(rng.random() < 0.3)):
            p = kp[:, :2] + rng.normal(0, rng.choice([0.01, 0.03, 0.08]) * scale, (k, 2))
            p[kp[:, 2] == 0] = rng.uniform(0, 300, (int((kp[:, 2] == 0).sum()), 2))
            s = np.round(rng.random(k), 3)
            res.append({"image_id": a["image_id"], "category_id": 1, "score": float(np.round(rng.random(), 2)),
                        "keypoints": np.concatenate([p, s[:, None]], 1).reshape(-1).tolist()})
    for iid, (w, h) in sizes.items():
        for _ in range(2):
            p = np.stack([rng.uniform(0, w, k), rng.uniform(0, h, k), rng.random(k)], 1)
            res.append({"image_id": iid, "category_id": 1, "score": float(rng.random()),
                        "keypoints": p.reshape(-1).tolist()})
    return res


@pytest.mark.parametrize("dataset,path,k", [("coco", "coco/test_coco.json", 17),
                                            ("crowdpose", "crowdpose/test_crowdpose.json", 14),
                                            ("ochuman", "ochuman/test_ochuman.json", 17)])
def test_real_files_equal_the_reference_tool(dataset, path, k, tmp_path):
    gt = json.loads((REAL / path).read_text())
    for seed in range(3):
        check(gt, predictions_from_gt(gt, seed, k), dataset, tmp_path)
    # Perfect predictions from the ground truth itself.
    perfect = [{"image_id": a["image_id"], "category_id": 1, "score": 1.0, "keypoints": a["keypoints"]}
               for a in gt["annotations"] if a["num_keypoints"] > 0]
    m = check(gt, perfect, dataset, tmp_path)
    assert m["AP"] == pytest.approx(1.0)


@pytest.mark.parametrize("dataset", ["coco", "ochuman", "crowdpose"])
@pytest.mark.parametrize("seed", range(4))
def test_random_scenes_equal_the_reference_tool(dataset, seed, tmp_path):
    gt, res = random_scene(40, 14 if dataset == "crowdpose" else 17, seed=seed, with_bbox=seed % 2 == 1,
                           crowdpose=dataset == "crowdpose", zero_score_prob=0.05)
    check(gt, res, dataset, tmp_path)


def test_pycocotools_quirks_are_kept(tmp_path):
    gt, res = random_scene(15, seed=11)
    gt["annotations"][0]["id"] = 0          # pycocotools counts a match to GT id 0 as no match
    check(gt, res, "coco", tmp_path)
    res = res[:5] + [dict(r, score=0.5) for r in res[5:]]            # many tied scores: stable order matters
    check(gt, res, "coco", tmp_path)


def test_empty_results_score_zero():
    gt = json.loads((REAL / "coco" / "test_coco.json").read_text())
    m = evaluate(gt, [], "coco")
    assert m["AP"] == 0 and m["AR"] == 0


def test_coco_oks_matches_the_definition():
    gt = np.array([[[10, 10, 2], [20, 20, 1], [0, 0, 0]]], np.float64)
    dt = np.array([[[11, 10, 1], [20, 23, 1], [50, 50, 1]]], np.float64)
    sig = np.array([0.1, 0.2, 0.3])
    o = coco_oks(dt, gt, np.array([400.0]), sig)
    e = np.array([1, 9]) / (2 * sig[:2]) ** 2 / (400 + np.spacing(1)) / 2
    assert o.shape == (1, 1) and o[0, 0] == pytest.approx(np.exp(-e).mean())


def test_bad_results_are_one_line_errors_naming_file_and_entry(tmp_path):
    gt = REAL / "coco" / "test_coco.json"
    good = {"image_id": 785, "category_id": 1, "score": 0.9, "keypoints": [1.0] * 51}
    cases = {
        "short.json": ([good, dict(good, keypoints=[1.0] * 42)], r"short\.json: entry 1 .*expected 51 keypoint values"),
        "nan.json": ([good, good, dict(good, keypoints=[float("nan")] + [1.0] * 50)],
                     r"nan\.json: entry 2 \(image_id 785\): keypoints contain NaN or infinity \(finite numbers"),
        "nullscore.json": ([good, dict(good, score=None)],
                           r"nullscore\.json: entry 1 \(image_id 785\): score is null \(finite numbers expected\)$"),
        "nullkp.json": ([dict(good, keypoints=[None] + [1.0] * 50)],
                        r"nullkp\.json: entry 0 \(image_id 785\): keypoints contain null \(finite numbers expected"),
        "unknown.json": ([dict(good, image_id=12345)], r"unknown\.json: entry 0: image_id 12345 is not in"),
        "noscore.json": ([{k: v for k, v in good.items() if k != "score"}], r"noscore\.json: entry 0 lacks 'score'"),
        "notlist.json": ({"a": 1}, r"notlist\.json: expected a list"),
    }
    for name, (obj, pattern) in cases.items():
        path = tmp_path / name
        path.write_text(json.dumps(obj))                                 # NaN is written as the JSON token NaN
        with pytest.raises(DataError, match=pattern) as e:
            evaluate(gt, path, "coco")
        assert "\n" not in str(e.value)
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(DataError, match=r"broken\.json: invalid JSON"):
        evaluate(gt, tmp_path / "broken.json", "coco")
    with pytest.raises(DataError, match="results file not found"):
        evaluate(gt, tmp_path / "missing.json", "coco")
    with pytest.raises(DataError, match="unknown dataset 'lsp'"):
        evaluate(gt, [good], "lsp")


@pytest.mark.parametrize("change, message", [
    (lambda g: g.__setitem__("images", {"a": 1}), "expected a COCO keypoint json with lists 'images' and"),
    (lambda g: g["annotations"].append("x"), r"annotation entry \d+ is not an object with 'image_id'"),
    (lambda g: g["images"].append({"file_name": "x.jpg"}), r"image entry \d+ is not an object with 'id'"),
])
def test_malformed_ground_truth_is_a_one_line_error(tmp_path, change, message):
    """'images' as a mapping, or entries that are not objects with their id: TypeError / KeyError tracebacks before."""
    gt = json.loads((REAL / "coco" / "test_coco.json").read_text())
    change(gt)
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    with pytest.raises(DataError, match=message) as e:
        evaluate(path, [], "coco")
    assert "\n" not in str(e.value)


def test_crowdpose_needs_crowd_index_and_format_table(tmp_path):
    gt = json.loads((REAL / "crowdpose" / "test_crowdpose.json").read_text())
    del gt["images"][0]["crowdIndex"]
    with pytest.raises(DataError, match="crowdIndex"):
        evaluate(gt, [], "crowdpose")
    m = evaluate(REAL / "coco" / "test_coco.json", predictions_from_gt(
        json.loads((REAL / "coco" / "test_coco.json").read_text()), 0, 17), "coco")
    table = format_metrics(m, "coco").splitlines()
    assert table[1].split("|")[0].strip() == "AP" and f"{m['AP']:.3f}" in table[3]


def test_a_declared_layouts_sigmas_score_as_pycocotools_with_kpt_oks_sigmas(tmp_path):
    """A 5-keypoint layout of one's own (generated animal data): AP/AR with its sigmas equal pycocotools given the
    same ``params.kpt_oks_sigmas``; COCO's 17 sigmas do not fit its keypoints."""
    from regpose.data.keypoints import make_layout
    from regpose.data.synthetic import generate

    layout = make_layout(["nose", "left_ear", "right_ear", "left_paw", "right_paw"], [0.026, 0.035, 0.035, 0.09, 0.09])
    ann = generate(tmp_path / "animal", 12, seed=2, size=(128, 128), max_people=4, progress=False, keypoints=layout,
                   joints=["nose", "left_ear", "right_ear", "left_wrist", "right_wrist"])
    gt = json.loads(ann.read_text())
    res = predictions_from_gt(gt, seed=4, k=5)
    ours = evaluate(copy.deepcopy(gt), copy.deepcopy(res), "coco", sigmas=layout.sigmas)
    ref = reference(gt, res, "coco", tmp_path, sigmas=layout.sigmas)
    assert 0.05 < ours["AP"] < 0.95
    assert [ours[k] for k in COCO_KEYS] == pytest.approx(ref, abs=1e-6)
    with pytest.raises(DataError, match="has 15 keypoint values, expected 51"):
        evaluate(copy.deepcopy(gt), copy.deepcopy(res), "coco")
