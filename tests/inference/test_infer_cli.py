"""``regpose infer`` end to end: real COCO images and a generated video -> results json (valid COCO results),
rendered pictures, an mp4 with the input's frame count and fps; bad inputs reported one line each; the Python
Predictor gives the json's people; top-down methods with a detections file or a detector, and a clear error
without either."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from regpose import Predictor
from regpose.cli import main
from _tiny import METHODS, TOPDOWN, write_tiny
from conftest import REAL

COCO = REAL / "coco"
IMAGES = sorted(COCO.glob("*.jpg"))
DETS = COCO / "test_coco_det_AP_H_56.json"


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {m: write_tiny(m, root / m) for m in METHODS}


def _make_video(path, frames=6, fps=12.0, size=(320, 212)):
    """A short clip: a real COCO picture panning sideways."""
    img = cv2.resize(cv2.imread(str(COCO / "000000000785.jpg")), (size[0] + 40, size[1]))
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for i in range(frames):
        w.write(np.ascontiguousarray(img[:, 4 * i: 4 * i + size[0]]))
    w.release()
    return path


def _video_info(path):
    cap = cv2.VideoCapture(str(path))
    fps = cap.get(cv2.CAP_PROP_FPS)
    size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n, fps, size


def test_infer_images_and_video(files, tmp_path, capsys):
    from regpose.evaluation import evaluate

    cfg, weights = files["querypose"]
    video = _make_video(tmp_path / "clip.mp4")
    out = tmp_path / "out"
    code = main(["infer", str(cfg), *map(str, IMAGES), str(video), "--weights", str(weights), "--out", str(out),
                 "--track", "--batch-size", "4"])
    assert code == 0
    summary = capsys.readouterr().out
    assert "processed 4 images, 1 video (6 frames); skipped 0" in summary
    res = json.loads((out / "results.json").read_text())
    assert res["info"]["method"] == "querypose" and len(res["info"]["keypoint_names"]) == 17
    for img in IMAGES:
        entry = res["images"][str(img)]
        assert entry["image_id"] == int(img.stem)
        assert len(entry["people"]) == 8                      # every proposal of the tiny model (threshold 0)
        p = entry["people"][0]
        assert len(p["keypoints"]) == 51 and len(p["bbox"]) == 4 and 0 <= p["score"] <= 1
        vis = cv2.imread(str(out / "vis" / (img.stem + ".jpg")))
        assert vis.shape == cv2.imread(str(img)).shape
        assert np.abs(vis.astype(int) - cv2.imread(str(img)).astype(int)).mean() > 0.05   # something was drawn
    # the COCO results list is what the evaluator reads
    metrics = evaluate(str(COCO / "test_coco.json"), str(out / "results_coco.json"))
    assert 0.0 <= metrics["AP"] <= 1.0
    # video: same length, fps and size; every frame's people carry track ids
    v = res["videos"][str(video)]
    assert v["num_frames"] == 6 and abs(v["fps"] - 12.0) < 1e-6
    assert all(all(p["track_id"] >= 0 for p in f["people"]) for f in v["frames"])
    n, fps, size = _video_info(out / "vis" / "clip.mp4")
    assert (n, size) == (6, (320, 212)) and abs(fps - 12.0) < 1e-3


@pytest.mark.parametrize("method", [m for m in METHODS if m != "querypose"])
def test_every_method_end_to_end(method, files, tmp_path):
    """Images and a video through the CLI (top-down methods: boxes from the tiny QueryPose as detector), then the
    Python Predictor on one of the images gives exactly the json's people."""
    cfg, weights = files[method]
    video = _make_video(tmp_path / "clip.mp4", frames=4, fps=7.0)
    images = IMAGES[:2]
    extra = ["--detector", str(files["querypose"][0]), "--detector-weights", str(files["querypose"][1])] \
        if method in TOPDOWN else []
    out = tmp_path / "out"
    assert main(["infer", str(cfg), *map(str, images), str(video), "--weights", str(weights), "--out", str(out),
                 "--no-progress", *extra]) == 0
    res = json.loads((out / "results.json").read_text())
    assert sorted(res["images"]) == sorted(map(str, images))
    assert sum(len(e["people"]) for e in res["images"].values()) > 0
    for img in images:
        assert cv2.imread(str(out / "vis" / (img.stem + ".jpg"))).shape == cv2.imread(str(img)).shape
    n, fps, size = _video_info(out / "vis" / "clip.mp4")
    assert (n, size) == (4, (320, 212)) and abs(fps - 7.0) < 1e-3
    assert res["videos"][str(video)]["num_frames"] == 4
    kw = {"detector": files["querypose"][0], "detector_weights": files["querypose"][1]} if method in TOPDOWN else {}
    result = Predictor(cfg, weights, device="cpu", **kw)(images[0])
    people = res["images"][str(images[0])]["people"]
    assert len(result) == len(people)
    if people:
        np.testing.assert_allclose(np.array([p["keypoints"] for p in people]).reshape(result.keypoints.shape),
                                   result.keypoints, atol=1e-4)
        np.testing.assert_allclose([p["score"] for p in people], result.scores, rtol=1e-6)


def test_predictor_equals_the_cli_json(files, tmp_path):
    cfg, weights = files["rle"]
    out = tmp_path / "out"
    image = COCO / "000000196141.jpg"
    assert main(["infer", str(cfg), str(image), "--weights", str(weights), "--out", str(out), "--boxes", str(DETS),
                 "--flip", "--no-render", "--no-progress"]) == 0
    people = json.loads((out / "results.json").read_text())["images"][str(image)]["people"]
    result = Predictor(cfg, weights, device="cpu", boxes=DETS, flip=True)(image)
    assert len(result) == len(people) > 5
    np.testing.assert_allclose(np.array([p["keypoints"] for p in people]).reshape(-1, 17, 3), result.keypoints,
                               atol=1e-4)
    np.testing.assert_allclose([p["score"] for p in people], result.scores, rtol=1e-6)
    xywh = np.concatenate([result.boxes[:, :2], result.boxes[:, 2:] - result.boxes[:, :2]], 1)
    np.testing.assert_allclose([p["bbox"] for p in people], xywh, atol=1e-2)
    # the same picture as an array (BGR as OpenCV reads it) gives the same people
    again = Predictor(cfg, weights, device="cpu", boxes=DETS, flip=True)(cv2.imread(str(image)), color="bgr",
                                                                        image_id=196141)
    np.testing.assert_allclose(again.keypoints, result.keypoints, atol=1e-5)


def test_onnx_backend_cli_matches_torch(files, tmp_path):
    cfg, weights = files["rle"]
    onnx = tmp_path / "rle.onnx"
    assert main(["export", str(cfg), "--weights", str(weights), "--out", str(onnx), "--dynamic"]) == 0
    outs = {}
    for backend, w in (("torch", weights), ("onnx", onnx)):
        out = tmp_path / backend
        assert main(["infer", str(cfg), str(IMAGES[0]), "--weights", str(w), "--out", str(out), "--boxes", str(DETS),
                     "--backend", backend, "--flip", "--no-render", "--no-progress"]) == 0
        outs[backend] = json.loads((out / "results.json").read_text())["images"][str(IMAGES[0])]["people"]
    assert len(outs["torch"]) == len(outs["onnx"]) > 0
    np.testing.assert_allclose([p["keypoints"] for p in outs["onnx"]], [p["keypoints"] for p in outs["torch"]],
                               atol=2e-4)


def test_topdown_boxes_from_a_detector(files, tmp_path):
    cfg, weights = files["rle"]
    det_cfg, det_weights = files["querypose"]
    out = tmp_path / "out"
    assert main(["infer", str(cfg), str(IMAGES[0]), "--weights", str(weights), "--out", str(out), "--detector",
                 str(det_cfg), "--detector-weights", str(det_weights), "--no-progress"]) == 0
    people = json.loads((out / "results.json").read_text())["images"][str(IMAGES[0])]["people"]
    assert len(people) >= 1 and (out / "vis" / (IMAGES[0].stem + ".jpg")).is_file()


def test_topdown_without_boxes_is_a_one_line_error(files, tmp_path, capsys):
    cfg, weights = files["rle"]
    code = main(["infer", str(cfg), str(IMAGES[0]), "--weights", str(weights), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1
    assert "top-down method and needs person boxes" in err and "--boxes" in err and "--detector" in err


def _bad_and_good_folder(root):
    """Good: grayscale PNG, RGBA PNG, 16-bit PNG, EXIF-rotated JPEG, a plain JPEG; bad: a corrupt JPEG, a text
    file named .jpg, an empty file, an unreadable video."""
    from PIL import Image

    root.mkdir()
    real = cv2.imread(str(COCO / "000000000785.jpg"))
    small = cv2.resize(real, (160, 106))
    cv2.imwrite(str(root / "gray.png"), cv2.cvtColor(small, cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(root / "rgba.png"), cv2.cvtColor(small, cv2.COLOR_BGR2BGRA))
    cv2.imwrite(str(root / "deep.png"), small.astype(np.uint16) * 257)
    (root / "sub").mkdir()
    cv2.imwrite(str(root / "sub" / "plain.jpg"), small)
    im = Image.fromarray(cv2.cvtColor(small, cv2.COLOR_BGR2RGB))
    exif = im.getexif()
    exif[0x0112] = 6                                        # rotate 90 degrees clockwise when displayed
    im.save(root / "exif.jpg", exif=exif)
    data = (COCO / "000000000785.jpg").read_bytes()
    (root / "corrupt.jpg").write_bytes(data[:2] + bytes(np.random.default_rng(0).integers(0, 256, 3000,
                                                                                          dtype=np.uint8)))
    (root / "notes.jpg").write_text("this is not an image\n")
    (root / "empty.png").write_bytes(b"")
    (root / "broken.mp4").write_text("not a video either\n")
    return root


def test_bad_inputs_are_reported_and_skipped(files, tmp_path, capfd):
    cfg, weights = files["querypose"]
    folder = _bad_and_good_folder(tmp_path / "mixed")
    out = tmp_path / "out"
    code = main(["infer", str(cfg), str(folder), str(tmp_path / "missing.jpg"), "--weights", str(weights),
                 "--out", str(out), "--no-progress"])
    captured = capfd.readouterr()                      # file-descriptor level: OpenCV / FFmpeg chatter included
    assert code == 0
    skipped = captured.err.splitlines()
    assert all(l.startswith("skipped ") for l in skipped), captured.err
    assert sorted(l.split(":")[0] for l in skipped) == sorted(
        f"skipped {p}" for p in (folder / "broken.mp4", folder / "corrupt.jpg", folder / "empty.png",
                                 folder / "notes.jpg", tmp_path / "missing.jpg"))
    assert "processed 5 images; skipped 5" in captured.out
    res = json.loads((out / "results.json").read_text())["images"]
    assert sorted(res) == sorted(str(folder / n) for n in ("deep.png", "exif.jpg", "gray.png", "rgba.png",
                                                           "sub/plain.jpg"))
    # EXIF orientation applied: the 160x106 picture is read (and drawn) upright as 106 wide, 160 high
    assert (res[str(folder / "exif.jpg")]["height"], res[str(folder / "exif.jpg")]["width"]) == (160, 106)
    assert cv2.imread(str(out / "vis" / "mixed" / "exif.jpg")).shape[:2] == (160, 106)
    assert (out / "vis" / "mixed" / "sub" / "plain.jpg").is_file()
    # grayscale, RGBA and 16-bit versions of one picture are the same picture to the model
    people = {n: np.array([p["keypoints"] for p in res[str(folder / n)]["people"]])
              for n in ("gray.png", "rgba.png", "deep.png")}
    assert len(people["rgba.png"]) > 0
    np.testing.assert_allclose(people["deep.png"], people["rgba.png"], atol=1e-3)


def test_nothing_processed_exits_non_zero(files, tmp_path, capsys):
    cfg, weights = files["querypose"]
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.jpg").write_text("text")
    code = main(["infer", str(cfg), str(folder), "--weights", str(weights), "--out", str(tmp_path / "o"),
                 "--no-progress"])
    captured = capsys.readouterr()
    assert code != 0
    assert "processed nothing; skipped 1" in captured.out and f"skipped {folder / 'a.jpg'}" in captured.err
