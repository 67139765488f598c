"""The synthetic crowd generator: reproducible bytes, valid COCO / CrowdPose / MPII annotations, fast enough."""
import contextlib
import filecmp
import io
import json
import os

import numpy as np
import pytest

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")   # pycocotools' numpy-2 notice

from regpose.data.config import SplitConfig
from regpose.data.datasets import load_records
from regpose.data.synthetic import generate, render_image


@pytest.fixture(scope="module")
def coco_split(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn") / "a"
    return generate(out, 24, seed=7, progress=False)


def test_same_seed_same_bytes_other_seed_other_images(coco_split, tmp_path):
    again = generate(tmp_path / "b", 24, seed=7, progress=False)
    assert filecmp.cmp(coco_split, again, shallow=False)
    a, b = coco_split.parent / "images", again.parent / "images"
    assert sorted(os.listdir(a)) == sorted(os.listdir(b))
    assert all(filecmp.cmp(a / f, b / f, shallow=False) for f in os.listdir(a))
    other = generate(tmp_path / "c", 3, seed=8, progress=False)
    assert not filecmp.cmp(a / "000001.jpg", other.parent / "images" / "000001.jpg", shallow=False)


def test_annotations_load_in_pycocotools_and_are_consistent(coco_split):
    from pycocotools.coco import COCO
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(coco_split))
    data = json.loads(coco_split.read_text())
    assert len(coco.getImgIds()) == 24 and len(data["annotations"]) > 24
    assert data["categories"][0]["keypoints"][9] == "left_wrist"
    for a in data["annotations"]:
        k = np.asarray(a["keypoints"], np.float64).reshape(17, 3)
        x, y, w, h = a["bbox"]
        im = coco.imgs[a["image_id"]]
        assert set(np.unique(k[:, 2])) <= {0, 1, 2}
        assert a["num_keypoints"] == np.count_nonzero(k[:, 2] > 0)
        lab = k[:, 2] > 0
        assert np.all(k[~lab] == 0)
        assert np.all((k[lab, 0] >= 0) & (k[lab, 0] <= im["width"] - 1) & (k[lab, 1] >= 0) & (k[lab, 1] <= im["height"] - 1))
        vis = k[:, 2] == 2                                              # visible keypoints lie inside their box
        assert np.all((k[vis, 0] >= x) & (k[vis, 0] <= x + w) & (k[vis, 1] >= y) & (k[vis, 1] <= y + h))
        m = coco.annToMask(a)                                           # the RLE decodes to the area
        assert m.sum() == a["area"] > 0
        ys, xs = np.nonzero(m)
        assert x <= xs.min() and xs.max() + 1 <= x + w + 1e-6 and y <= ys.min() and ys.max() + 1 <= y + h + 1e-6
    labelled = [a for a in data["annotations"] if a["num_keypoints"] > 0]
    areas = np.array([a["area"] for a in labelled])
    assert np.mean(areas > 32 ** 2) > 0.75                              # medium / large people dominate
    v = np.concatenate([np.asarray(a["keypoints"])[2::3] for a in labelled])
    assert 0.55 < np.mean(v == 2) < 0.9 and np.mean(v == 1) > 0.05      # visible, occluded and outside all occur


def test_records_and_images_read_back(coco_split):
    recs = load_records(SplitConfig(ann_files=[str(coco_split)]), "coco")
    from regpose.data.datasets import read_image
    img = read_image(recs[0].file_name)
    assert img.shape == (256, 256, 3) and img.std() > 10


def test_crowdpose_and_mpii_layouts(tmp_path):
    cp = json.loads(generate(tmp_path / "cp", 10, seed=1, fmt="crowdpose", size=(160, 128), progress=False).read_text())
    assert all("crowdIndex" in im and 0 <= im["crowdIndex"] for im in cp["images"])
    assert any(im["crowdIndex"] > 0 for im in cp["images"]) and not any(a["iscrowd"] for a in cp["annotations"])
    for a in cp["annotations"]:
        k = np.asarray(a["keypoints"]).reshape(14, 3)
        assert a["num_keypoints"] == np.count_nonzero(k[:, 2] == 2)     # CrowdPose counts visible ones only
    assert cp["images"][0]["width"] == 160 and cp["images"][0]["height"] == 128
    mp = generate(tmp_path / "mp", 6, seed=1, fmt="mpii", progress=False)
    recs = load_records(SplitConfig(ann_files=[str(mp)]), "mpii")
    assert recs and recs[0].keypoints.shape[1:] == (16, 3) and np.isfinite(recs[0].extra["headbox"]).all()


def test_left_and_right_are_where_a_person_facing_us_has_them():
    """Front-facing upright people have their left shoulder on the image right (and the reverse from behind)."""
    seen = {True: 0, False: 0}
    for i in range(40):
        img, anns = render_image(np.random.default_rng([3, i]), (256, 256), 1, "coco")
        for a in anns:
            k = np.asarray(a["keypoints"]).reshape(17, 3)
            if a["num_keypoints"] == 0 or k[5, 2] == 0 or k[6, 2] == 0 or k[3, 2] == 0:
                continue
            front = k[1, 2] > 0 or k[2, 2] > 0                          # eyes are annotated only when facing us
            if abs(k[5, 1] - k[6, 1]) < abs(k[5, 0] - k[6, 0]):        # roughly upright shoulders
                assert (k[5, 0] > k[6, 0]) == front
                seen[bool(front)] += 1
    assert seen[True] >= 5 and seen[False] >= 1


def test_bad_arguments_are_one_line_errors(tmp_path):
    from regpose.errors import DataError
    with pytest.raises(DataError, match="coco, crowdpose, mpii"):
        generate(tmp_path, 2, fmt="lsp", progress=False)
    with pytest.raises(DataError, match="at least 32x32"):
        generate(tmp_path, 2, size=(8, 8), progress=False)
