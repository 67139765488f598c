"""Readers, images, masks, detections and datasets on the real sample files."""
import json
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import REAL
from regpose.config import load_config
from regpose.data.config import SplitConfig, SynthSpec
from regpose.data.datasets import (ImageDataset, TopDownDataset, build_dataset, clean_gt_boxes, ensure_synthetic,
                                   evaluation_gt, ignore_mask, load_detections, load_records, read_detections,
                                   read_image)
from regpose.errors import ConfigError, DataError

COCO = REAL / "coco" / "test_coco.json"
CROWD = REAL / "crowdpose" / "test_crowdpose.json"
OCH = REAL / "ochuman" / "test_ochuman.json"
MPII = REAL / "mpii" / "test_mpii.json"


def split(*files, **kw):
    return SplitConfig(ann_files=[str(f) for f in files], **kw)


def test_coco_records_match_the_file():
    data = json.loads(COCO.read_text())
    recs = load_records(split(COCO), "coco")
    assert [r.image_id for r in recs] == [im["id"] for im in data["images"]]
    assert sum(r.num_people for r in recs) == len(data["annotations"])
    by_id = {a["id"]: a for a in data["annotations"]}
    for r in recs:
        img = read_image(r.file_name)
        assert img.shape == (r.height, r.width, 3) and img.dtype == np.uint8
        for i, aid in enumerate(r.ann_ids):
            a = by_id[int(aid)]
            assert np.allclose(r.keypoints[i].reshape(-1), a["keypoints"])
            assert np.allclose(r.boxes[i], a["bbox"], atol=1e-4)
            assert r.num_keypoints[i] == a["num_keypoints"] and r.areas[i] == pytest.approx(a["area"])
            assert r.segmentations[i] == a["segmentation"]


def test_crowdpose_ochuman_and_two_files_concatenated():
    recs = load_records(split(CROWD), "crowdpose")
    assert [r.crowd_index for r in recs] == [0.33, 0.39]
    assert recs[0].keypoints.shape[1:] == (14, 3)
    assert recs[0].num_keypoints.tolist() == [5, 0, 10]        # CrowdPose counts only v == 2
    both = load_records(split(CROWD, CROWD), "crowdpose")
    assert len(both) == 2 * len(recs)
    och = load_records(split(OCH), "ochuman")
    assert sum(r.num_people for r in och) == 5 and isinstance(och[0].segmentations[0], dict)


def test_mpii_layout_is_read_as_mmpose_does():
    data = json.loads(MPII.read_text())
    recs = load_records(split(MPII), "mpii")
    assert len(recs) == 5 and recs[0].image_id == 5808361
    p, r = data[0], recs[0]
    vis = np.asarray(p["joints_vis"]) > 0
    assert np.allclose(r.keypoints[0, vis, :2], np.asarray(p["joints"])[vis] - 1)       # MATLAB 1-based -> 0-based
    assert np.all(r.keypoints[0, ~vis] == 0) and np.all(r.keypoints[0, vis, 2] == 2)
    # Box: square of side 200 s centred at (centre - 1) shifted down by 15 s, so padding 1.25 gives mmpose's crop.
    s = p["scale"]
    cx, cy = p["center"][0] - 1, p["center"][1] - 1 + 15 * s
    assert np.allclose(r.boxes[0], [cx - 100 * s, cy - 100 * s, 200 * s, 200 * s], atol=1e-3)
    assert (r.width, r.height) == (1280, 720)


def test_wrong_keypoint_count_and_missing_files_are_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="expects 14") as e:
        load_records(split(COCO), "crowdpose")
    assert "test_coco.json" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DataError, match="annotation file not found"):
        load_records(split(tmp_path / "nope.json"), "coco")
    with pytest.raises(DataError, match=rf"image folder not found: {tmp_path / 'imgs'} \(the image_dir given for "
                                        rf"test_coco.json\)"):
        load_records(split(COCO, image_dir=str(tmp_path / "imgs")), "coco")
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    with pytest.raises(DataError, match="invalid JSON"):
        load_records(split(bad), "coco")
    data = json.loads(COCO.read_text())
    data["annotations"][3]["keypoints"] = data["annotations"][3]["keypoints"][:-3]
    short = tmp_path / "short.json"
    short.write_text(json.dumps(data))
    with pytest.raises(DataError, match=f"annotation {data['annotations'][3]['id']} has 48 keypoint values"):
        load_records(split(short), "coco")


def test_read_image_handles_odd_files(tmp_path):
    gray = (np.arange(30 * 40) % 256).astype(np.uint8).reshape(30, 40)
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    g = read_image(tmp_path / "g.png")
    assert g.shape == (30, 40, 3) and np.array_equal(g[..., 0], gray) and np.array_equal(g[..., 2], gray)
    rgba = np.zeros((8, 9, 4), np.uint8)
    rgba[..., 0], rgba[..., 2], rgba[..., 3] = 10, 200, 77          # BGRA on disk
    cv2.imwrite(str(tmp_path / "a.png"), rgba)
    a = read_image(tmp_path / "a.png")
    assert a.shape == (8, 9, 3) and a[0, 0].tolist() == [200, 0, 10]   # RGB, alpha dropped
    deep = (np.arange(20 * 20, dtype=np.uint16) * 150).reshape(20, 20)
    cv2.imwrite(str(tmp_path / "d.png"), deep)
    d = read_image(tmp_path / "d.png")
    assert d.dtype == np.uint8 and d[..., 0].max() == deep.max() >> 8
    from PIL import Image
    img = np.zeros((10, 30, 3), np.uint8)
    img[:, :5] = 255
    im = Image.fromarray(img)
    exif = im.getexif()
    exif[0x0112] = 6                                                   # "rotate 90 CW" for display
    im.save(tmp_path / "e.jpg", exif=exif)
    assert read_image(tmp_path / "e.jpg").shape == (30, 10, 3)
    (tmp_path / "t.jpg").write_text("not an image")
    with pytest.raises(DataError, match=r"cannot decode image .*t\.jpg"):
        read_image(tmp_path / "t.jpg")
    with pytest.raises(DataError, match=r"image not found: .*missing\.jpg"):
        read_image(tmp_path / "missing.jpg")


def test_a_damaged_jpeg_is_reported_once_with_its_name_not_as_a_stray_libjpeg_line(tmp_path):
    img = (np.random.default_rng(0).uniform(0, 255, (64, 64, 3))).astype(np.uint8)
    data = bytearray(cv2.imencode(".jpg", img)[1].tobytes())
    for i in range(len(data) // 2, len(data) // 2 + 40, 7):      # garble the entropy-coded data
        data[i] = 0xFF
    path = tmp_path / "damaged.jpg"
    path.write_bytes(bytes(data))
    code = ("import sys; from regpose.data.datasets import read_image; "
            f"print(read_image({str(path)!r}).shape, read_image({str(path)!r}).shape)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "(64, 64, 3) (64, 64, 3)"
    assert r.stderr.strip().splitlines() == [f"{path}: damaged image, used as decoded (Corrupt JPEG data: "
                                             f"premature end of data segment)"]


def test_ignore_mask_blanks_crowd_and_unlabelled_people():
    rec = next(r for r in load_records(split(COCO), "coco") if r.image_id == 40083)
    i = int(np.nonzero(rec.num_keypoints == 0)[0][0])
    from pycocotools import mask as mu
    seg = mu.decode(mu.merge(mu.frPyObjects(rec.segmentations[i], rec.height, rec.width))).astype(bool)
    m = ignore_mask(rec)
    assert m.shape == (rec.height, rec.width) and m.dtype == np.float32
    assert np.all(m[seg] == 0) and np.all(m[~seg] == 1)
    crowd = load_records(split(CROWD), "crowdpose")[0]
    assert np.all(ignore_mask(crowd) == 1)                              # DEKR: CrowdPose has no ignore regions


def test_topdown_gt_boxes_are_cleaned_as_poseur():
    recs = load_records(split(OCH), "ochuman")
    r = recs[2]
    idx, boxes = clean_gt_boxes(r)
    x, y, w, h = r.boxes.astype(np.float64).T
    x1, y1 = np.maximum(0, x), np.maximum(0, y)
    x2 = np.minimum(r.width - 1, x1 + np.maximum(0, w))
    y2 = np.minimum(r.height - 1, y1 + np.maximum(0, h))
    assert np.allclose(boxes, np.stack([x1, y1, x2 - x1, y2 - y1], 1)[idx])
    coco = load_records(split(COCO), "coco")
    ds = TopDownDataset(coco)
    assert len(ds) == sum(int(((rr.num_keypoints > 0) & ~rr.iscrowd).sum()) for rr in coco)
    s = ds[0]
    assert s["box_score"] == 1.0 and s["person_index"] >= 0
    assert np.allclose(s["box"], [s["box_xywh"][0], s["box_xywh"][1], s["box_xywh"][0] + s["box_xywh"][2],
                                  s["box_xywh"][1] + s["box_xywh"][3]])


def test_detections_and_their_dataset():
    dets = load_detections(REAL / "coco" / "test_coco_det_AP_H_56.json")
    raw = json.loads((REAL / "coco" / "test_coco_det_AP_H_56.json").read_text())
    assert sum(len(v) for v in dets.values()) == len(raw)
    first = raw[0]
    assert np.allclose(dets[first["image_id"]][0], first["bbox"] + [first["score"]])
    kept = load_detections(REAL / "coco" / "test_coco_det_AP_H_56.json", score_threshold=0.5)
    assert sum(len(v) for v in kept.values()) == sum(d["score"] >= 0.5 for d in raw)
    ds = TopDownDataset(load_records(split(COCO), "coco"), boxes="detections", detections=kept)
    s = ds[len(ds) - 1]
    assert s["person_index"] == -1 and s["box_score"] >= 0.5 and len(ds) == sum(len(v) for v in kept.values())


def test_detection_file_errors(tmp_path):
    p = tmp_path / "d.json"
    p.write_text(json.dumps([{"image_id": 1, "bbox": [1, 2, 3], "score": 0.9}]))
    with pytest.raises(DataError, match=r"d\.json: entry 0: 'bbox' has 3 values"):
        load_detections(p)
    for bad, what in (({"score": None}, "score None"), ({"bbox": "1,2,3,4"}, "'bbox' has '1,2,3,4'"),
                      ({"image_id": "x"}, "image_id 'x'"), ({"image_id": 1.5}, "image_id 1.5")):
        p.write_text(json.dumps([{"image_id": 1, "bbox": [1, 2, 3, 4], "score": 0.9, **bad}]))
        with pytest.raises(DataError, match=re.escape(what)):             # main: TypeError / ValueError tracebacks
            load_detections(p)


def test_detections_with_image_entries(tmp_path):
    """The dict layout (a detector's output with its images, or a ground-truth file): boxes by image id, crowd
    regions skipped, the entries' file names returned; an annotation of an image not listed is an error."""
    p = tmp_path / "d.json"
    data = {"images": [{"id": 3, "file_name": "a/x.jpg"}, {"id": "4", "file_name": "y.jpg"}],
            "annotations": [{"image_id": 3, "bbox": [1, 2, 3, 4]}, {"image_id": 4, "bbox": [0, 0, 9, 9], "score": 0.2},
                            {"image_id": 3, "bbox": [5, 5, 5, 5], "iscrowd": 1}]}
    p.write_text(json.dumps(data))
    boxes, files = read_detections(p, score_threshold=0.1)
    assert files == {3: "a/x.jpg", 4: "y.jpg"}
    np.testing.assert_array_equal(boxes[3], [[1, 2, 3, 4, 1.0]])
    np.testing.assert_array_equal(boxes[4], [[0, 0, 9, 9, 0.2]])
    data["annotations"].append({"image_id": 5, "bbox": [1, 1, 1, 1]})
    p.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"annotations\[3\]: image_id 5 has no entry in 'images'"):
        read_detections(p)


def test_skip_corrupt_images_counts_and_goes_on(tmp_path):
    recs = load_records(split(COCO), "coco")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8garbage")
    recs[1].file_name = str(tmp_path / "broken.jpg")
    strict = ImageDataset(recs)
    with pytest.raises(DataError, match="broken.jpg"):
        strict[1]
    lenient = ImageDataset(recs, skip_corrupt=True)
    s = lenient[1]
    assert s["image_id"] == recs[2].image_id and lenient.num_skipped == 1


def _cfg(train, val, fmt="coco", **test):
    return load_config({"method": _METHOD, "data": {"format": fmt, "train": train, "val": val}, "test": test})


_METHOD = None


@pytest.fixture(scope="module", autouse=True)
def _tiny_method():
    global _METHOD
    import dataclasses
    from regpose.models.registry import MethodSpec, register_method

    @dataclasses.dataclass
    class _Cfg:
        pass

    register_method(MethodSpec("_data_test", _Cfg, None, "bottomup", lambda cfg, train: None))
    _METHOD = "_data_test"


def test_build_dataset_by_family_and_evaluation_gt(tmp_path):
    cfg = _cfg({"ann_files": [str(COCO)]}, {"ann_files": [str(COCO), str(COCO)]}, boxes="detections",
               detections=str(REAL / "coco" / "test_coco_det_AP_H_56.json"), det_score_threshold=0.9)
    assert isinstance(build_dataset(cfg, "train", None, "bottomup"), ImageDataset)
    td = build_dataset(cfg, "val", None, "topdown")
    assert isinstance(td, TopDownDataset) and td.boxes == "detections"
    merged = evaluation_gt(cfg, "val")
    data = json.loads(open(merged).read())
    assert len(data["annotations"]) == 2 * len(json.loads(COCO.read_text())["annotations"])
    cfg1 = _cfg({"ann_files": [str(COCO)]}, {"ann_files": [str(COCO)]})
    assert evaluation_gt(cfg1, "val") == str(COCO)


def test_topdown_boxes_of_a_detector_model_come_in_precomputed(tmp_path):
    """test.boxes=model (issue 20.1): the detector's boxes are computed before the dataset is built, so the data layer
    crops the boxes it is handed and never loads the detector - its config and weights do not even exist here -
    and without them it says, in one line, where such boxes come from."""
    cfg = _cfg({"ann_files": [str(COCO)]}, {"ann_files": [str(COCO)]}, boxes="model", det_score_threshold=0.5,
               detector_config=str(tmp_path / "missing_detector.yaml"), detector_weights=str(tmp_path / "missing.pth"))
    boxes = {785: np.array([[10.0, 20.0, 30.0, 60.0, 0.9], [5.0, 5.0, 10.0, 10.0, 0.2]]),
             40083: np.array([[0.0, 0.0, 50.0, 80.0, 0.7]])}
    ds = build_dataset(cfg, "val", None, "topdown", person_boxes=boxes)
    assert isinstance(ds, TopDownDataset) and len(ds) == 2          # the 0.2 box is below test.det_score_threshold
    got = sorted((s["image_id"], s["box_xywh"].tolist(), s["box"].tolist(), s["box_score"], s["person_index"])
                 for s in (ds[0], ds[1]))
    assert got == [(785, [10, 20, 30, 60], [10, 20, 40, 80], 0.9, -1), (40083, [0, 0, 50, 80], [0, 0, 50, 80], 0.7, -1)]
    with pytest.raises(ConfigError) as e:
        build_dataset(cfg, "val", None, "topdown")
    assert str(e.value).startswith("test.boxes: 'model' boxes are computed before the dataset is built") \
        and "\n" not in str(e.value)


def test_synthetic_split_generated_once_and_checked(tmp_path):
    sp = SplitConfig(root=str(tmp_path / "syn"), synthetic=SynthSpec(num_images=4, seed=2, size=(96, 80)))
    recs = load_records(sp, "coco")
    assert len(recs) == 4 and (recs[0].width, recs[0].height) == (96, 80)
    mtime = os.stat(tmp_path / "syn" / "annotations.json").st_mtime_ns
    ensure_synthetic(sp, "coco")
    assert os.stat(tmp_path / "syn" / "annotations.json").st_mtime_ns == mtime      # not regenerated
    other = SplitConfig(root=str(tmp_path / "syn"), synthetic=SynthSpec(num_images=5, seed=2, size=(96, 80)))
    with pytest.raises(DataError, match="num_images=4 .config 5."):
        ensure_synthetic(other, "coco")


def test_two_processes_racing_to_generate_agree(tmp_path):
    code = ("import sys; from regpose.data.config import SplitConfig, SynthSpec; "
            "from regpose.data.datasets import ensure_synthetic; "
            f"ensure_synthetic(SplitConfig(root=r'{tmp_path / 'race'}', synthetic=SynthSpec(num_images=6, seed=1, "
            "size=(64, 64))), 'coco')")
    procs = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()[-500:]
    assert len(os.listdir(tmp_path / "race" / "images")) == 6
    assert [p.name for p in tmp_path.iterdir()] == ["race"]                        # no temporary folder left


@pytest.mark.parametrize("family", ["topdown", "bottomup", "onestage"])
@pytest.mark.parametrize("case", ["no_annotations", "all_boxes_invalid"])
def test_empty_training_set_is_one_line_naming_the_file(tmp_path, family, case):
    data = json.loads(COCO.read_text())
    if case == "no_annotations":
        data["annotations"] = []
    else:   # crowd regions without keypoints with empty boxes: nothing any method can learn from
        for a in data["annotations"]:
            a["bbox"], a["iscrowd"], a["num_keypoints"], a["keypoints"] = [0, 0, 0, 0], 1, 0, [0] * 51
    path = tmp_path / "train.json"
    path.write_text(json.dumps(data))
    cfg = _cfg({"ann_files": [str(path)]}, {"ann_files": [str(COCO)]})
    with pytest.raises(DataError) as e:
        build_dataset(cfg, "train", None, family)
    msg = str(e.value)
    assert msg.startswith(f"data.train ({path}): no training samples: {len(data['images'])} images with "
                          f"{len(data['annotations'])} annotations") and "\n" not in msg
    assert len(build_dataset(cfg, "val", None, "bottomup")) == len(json.loads(COCO.read_text())["images"])


@pytest.mark.parametrize("field, value, what", [
    ("keypoints", float("nan"), "keypoint 'nose'"), ("keypoints", float("inf"), "keypoint 'nose'"),
    ("keypoints", None, "keypoint 'nose'"), ("bbox", float("nan"), "bbox"), ("area", float("inf"), "area")])
def test_non_finite_ground_truth_fails_naming_the_annotation_or_is_skipped_on_request(tmp_path, field, value, what):
    data = json.loads(COCO.read_text())
    ann = next(a for a in data["annotations"] if a["keypoints"][2] > 0 and not a["iscrowd"])   # nose labelled
    if field == "area":
        ann["area"] = value
    else:
        ann[field][0] = value
    # unlabelled joints may hold anything: their coordinates are ignored (and zeroed)
    other = next(a for a in data["annotations"] if a is not ann and a["keypoints"][5] == 0)
    other["keypoints"][3] = float("nan")
    path = tmp_path / "nan.json"
    path.write_text(json.dumps(data))          # NaN / Infinity tokens, as Python's json writes them; null for None
    with pytest.raises(DataError) as e:
        load_records(split(path), "coco")
    assert str(e.value) == (f"{path}: annotation {ann['id']} (image {ann['image_id']}): {what} is NaN, infinite or "
                            f"null; fix the file, or set data.invalid_annotations=skip to drop such annotations")
    recs = load_records(split(path), "coco", invalid="skip")
    good = load_records(split(COCO), "coco")
    ids = np.concatenate([r.ann_ids for r in recs])
    assert ann["id"] not in ids and len(ids) == sum(r.num_people for r in good) - 1
    kept = next(r for r in recs if other["id"] in r.ann_ids)
    assert np.isfinite(kept.keypoints).all()
    cfg = _cfg({"ann_files": [str(path)]}, {"ann_files": [str(COCO)]})
    cfg.data.invalid_annotations = "skip"
    assert len(build_dataset(cfg, "train", None, "topdown")) == len(build_dataset(
        _cfg({"ann_files": [str(COCO)]}, {"ann_files": [str(COCO)]}), "train", None, "topdown")) - 1


def test_non_numeric_annotation_values_are_one_line_errors(tmp_path):
    data = json.loads(COCO.read_text())
    ann = data["annotations"][2]
    ann["bbox"][1] = "12px"
    path = tmp_path / "str.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=rf"annotation {ann['id']} \(image {ann['image_id']}\): 'bbox' is "
                                        rf"\[.*'12px'.*expected numbers"):
        load_records(split(path), "coco")
    data["annotations"][2] = "not an object"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="annotation entry 2 is not an object"):
        load_records(split(path), "coco")


def test_duplicate_image_ids_and_non_list_sections_are_one_line_errors(tmp_path):
    data = json.loads(COCO.read_text())
    data["images"].append(dict(data["images"][1]))
    path = tmp_path / "dup.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=rf"dup.json: image id {data['images'][1]['id']} appears twice in 'images'"):
        load_records(split(path), "coco")
    path.write_text(json.dumps(dict(data, images={"a": 1})))
    with pytest.raises(DataError, match="expected a COCO-style keypoint json with lists 'images' and 'annotations'"):
        load_records(split(path), "coco")
