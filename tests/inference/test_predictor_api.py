"""The Python API says what it takes: person boxes in the format of ``result.boxes`` (x1, y1, x2, y2; other
formats named by ``box_format``), arrays with their declared channel order (``color``), and the README's Python
example runs as written."""
from __future__ import annotations

import re

import cv2
import numpy as np
import pytest
import torch

import regpose
from regpose import Predictor
from regpose.errors import InputError
from regpose.inference.predictor import boxes_to_xywh
from _tiny import write_tiny
from conftest import REAL, REPO

COCO = REAL / "coco"
IMAGE = COCO / "000000196141.jpg"
DETS = COCO / "test_coco_det_AP_H_56.json"

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def rle(tmp_path_factory):
    cfg, weights = write_tiny("rle", tmp_path_factory.mktemp("rle"))
    return Predictor(cfg, weights, device="cpu", boxes=DETS)


def _same_people(a, b):
    assert len(a) == len(b)
    np.testing.assert_allclose(a.keypoints, b.keypoints, atol=1e-4)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)


def test_result_boxes_passed_back_give_the_same_people(rle):
    first = rle(IMAGE)                                  # boxes from the detections json
    assert len(first) > 5
    with_scores = np.concatenate([first.boxes, first.extras["box_score"][:, None]], 1)
    again = rle(IMAGE, boxes=with_scores)               # result.boxes (x1, y1, x2, y2) back in, as they are
    _same_people(first, again)
    xywh = np.concatenate([first.boxes[:, :2], first.boxes[:, 2:] - first.boxes[:, :2], with_scores[:, 4:]], 1)
    _same_people(first, rle(IMAGE, boxes=xywh, box_format="xywh"))


def test_box_conversion_by_hand():
    np.testing.assert_allclose(boxes_to_xywh([[10, 20, 40, 80]]), [[10, 20, 30, 60, 1]])
    np.testing.assert_allclose(boxes_to_xywh([[10, 20, 30, 60, 0.5]], "xywh"), [[10, 20, 30, 60, 0.5]])
    np.testing.assert_allclose(boxes_to_xywh([[25, 50, 30, 60]], "cxcywh"), [[10, 20, 30, 60, 1]])
    with pytest.raises(InputError, match="box_format"):
        boxes_to_xywh([[0, 0, 1, 1]], "ltrb")


def test_bgr_and_rgb_arrays_give_the_same_people_when_declared(rle):
    bgr = cv2.imread(str(IMAGE))
    from_file = rle(IMAGE)
    _same_people(from_file, rle(bgr, color="bgr", image_id=196141))
    _same_people(from_file, rle(np.ascontiguousarray(bgr[..., ::-1]), color="rgb", image_id=196141))
    swapped = rle(bgr, color="rgb", image_id=196141)    # what a silent RGB guess would have computed
    assert not np.allclose(swapped.keypoints, from_file.keypoints, atol=1e-4)
    with pytest.raises(InputError, match="color='bgr'"):
        rle(bgr, image_id=196141)
    with pytest.raises(InputError, match="color: expected 'rgb' or 'bgr'"):
        rle(bgr, color="BGR", image_id=196141)
    # grayscale has no channel order to declare; render returns the channel order it was given
    assert len(rle(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), image_id=196141)) == len(from_file)
    drawn_bgr = rle.render(bgr, from_file, color="bgr")
    np.testing.assert_array_equal(drawn_bgr[..., ::-1], rle.render(IMAGE, from_file))


@pytest.fixture
def demo_files(tmp_path, monkeypatch):
    """What `make demo` leaves behind, in a fresh folder: the synthetic validation split, a Poseur checkpoint of the
    demo config (random weights: the example must run, not predict well) and a results file."""
    from regpose.data.datasets import ensure_synthetic
    from regpose.inference.runner import write_results

    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(REPO / "configs")
    cfg = regpose.load_config("configs/poseur/poseur_tiny_synthetic.yaml")
    ensure_synthetic(cfg.data.val, cfg.data.format)
    run = tmp_path / "runs" / "demo" / "poseur"
    run.mkdir(parents=True)
    torch.save(regpose.build_model(cfg).state_dict(), run / "model_final.pth")
    result = Predictor(cfg, run / "model_final.pth", device="cpu")(
        "data/synth/coco_val_s1_n200/images/000001.jpg", boxes=[[0, 34, 124, 236]])
    write_results({1: result}, run / "results_val.json")
    return tmp_path


def test_readme_python_example_runs_as_written(demo_files):
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Python\n"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope: dict = {}
    exec(compile(code, "README.md (## Python)", "exec"), scope)
    assert (demo_files / "poses.jpg").is_file()
    result, again = scope["result"], scope["again"]
    assert len(result) == 2 and result.keypoints.shape == (2, 17, 3)
    np.testing.assert_allclose(again.keypoints, result.keypoints, atol=1e-4)
    assert "AP" in scope["metrics"]
