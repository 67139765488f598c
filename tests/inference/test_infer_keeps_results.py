"""``regpose infer`` never loses what it computed and never attributes one image's boxes to another: tracking
through frames without people, results written when a later input fails / Ctrl-C / SIGTERM, image ids distinct per
input, person boxes matched by the stated file-name rule and inputs without boxes reported (issue 18, items 1-2)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from regpose import Predictor
from regpose.cli import main
from regpose.errors import InputError
from regpose.inference.boxes import DetectionBoxes, unique_image_ids
from _tiny import write_tiny
from conftest import REAL

COCO = REAL / "coco"
PICTURE = COCO / "000000000785.jpg"
OTHER = COCO / "000000040083.jpg"

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {m: write_tiny(m, root / m) for m in ("querypose", "rle")}


def _black_video(path, frames=5, size=(128, 96)):
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, size)
    for _ in range(frames):
        w.write(np.zeros((size[1], size[0], 3), np.uint8))
    w.release()
    return path


def _folder(root, names, picture=PICTURE):
    root.mkdir(parents=True, exist_ok=True)
    data = picture.read_bytes()
    for n in names:
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        (root / n).write_bytes(data)
    return root


def _det(box, image_id, score=0.99):
    return {"image_id": image_id, "category_id": 1, "bbox": box, "score": score}


def _results(out):
    return json.loads((out / "results.json").read_text()), json.loads((out / "results_coco.json").read_text())


# ---- item 1: tracking through frames without people; results written on every way out -------------------------
def test_track_through_a_video_whose_first_frames_have_nobody(files, tmp_path, capsys):
    """Main crashed here (reshape of an empty track set) and wrote no results, not even the images before it."""
    cfg, weights = files["querypose"]
    video = _black_video(tmp_path / "black.mp4")
    out = tmp_path / "out"
    code = main(["infer", str(cfg), str(PICTURE), str(video), "--weights", str(weights), "--out", str(out),
                 "--track", "--no-progress", "--score-threshold", "0.99"])
    assert code == 0, capsys.readouterr().err
    res, _ = _results(out)
    assert str(PICTURE) in res["images"]
    frames = res["videos"][str(video)]["frames"]
    assert len(frames) == 5 and all(f["people"] == [] for f in frames)


@pytest.mark.parametrize("failure", [RuntimeError, KeyboardInterrupt])
def test_results_so_far_are_written_when_a_later_input_fails(files, tmp_path, capsys, monkeypatch, failure):
    """Fault injection: drawing the third picture fails (an unexpected error, or Ctrl-C). The people found in the
    three pictures predicted so far are in both results files, and the summary says the run stopped early."""
    cfg, weights = files["querypose"]
    folder = _folder(tmp_path / "in", ["1.jpg", "2.jpg", "3.jpg", "4.jpg"])
    calls = []
    real_render = Predictor.render

    def render(self, image, result, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise failure("injected")
        return real_render(self, image, result, **kw)

    monkeypatch.setattr(Predictor, "render", render)
    out = tmp_path / "out"
    argv = ["infer", str(cfg), str(folder), "--weights", str(weights), "--out", str(out), "--no-progress"]
    if failure is KeyboardInterrupt:
        assert main(argv) == 130
    else:
        with pytest.raises(RuntimeError, match="injected"):
            main(argv)
    captured = capsys.readouterr()
    assert "stopped early: processed 3 images" in captured.out
    assert captured.err.strip().splitlines() == (["interrupted"] if failure is KeyboardInterrupt else [])
    res, coco = _results(out)
    assert sorted(res["images"]) == [str(folder / n) for n in ("1.jpg", "2.jpg", "3.jpg")]
    assert len(coco) == sum(len(e["people"]) for e in res["images"].values()) > 0


def test_results_are_rewritten_while_the_run_goes_on(files, tmp_path, monkeypatch):
    """With the rewrite interval at zero, the results files on disk already hold every earlier picture when the
    next one is drawn: a run killed outright (SIGKILL, power) loses at most one interval."""
    from regpose.cli.inference import _InferRun

    cfg, weights = files["querypose"]
    folder = _folder(tmp_path / "in", ["1.jpg", "2.jpg", "3.jpg"])
    out = tmp_path / "out"
    on_disk = []
    real_render = Predictor.render

    def render(self, image, result, **kw):
        path = out / "results.json"
        on_disk.append(sorted(json.loads(path.read_text())["images"]) if path.exists() else None)
        return real_render(self, image, result, **kw)

    monkeypatch.setattr(_InferRun, "FLUSH_SECONDS", 0.0)
    monkeypatch.setattr(Predictor, "render", render)
    assert main(["infer", str(cfg), str(folder), "--weights", str(weights), "--out", str(out), "--no-progress"]) == 0
    names = [str(folder / n) for n in ("1.jpg", "2.jpg", "3.jpg")]
    assert on_disk == [None, names[:1], names[:2]]         # drawn right after its own results are computed


def test_sigterm_mid_run_keeps_the_results_of_the_frames_done(files, tmp_path):
    """The real command in a subprocess, stopped by SIGTERM (a scheduler's stop) while it works through a long
    video: exit 143 without a traceback, the results files hold the frames processed up to then. (Ctrl-C takes
    the same way out: the KeyboardInterrupt case above.)"""
    cfg, weights = files["querypose"]
    video = tmp_path / "long.mp4"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (160, 106))
    small = cv2.resize(cv2.imread(str(PICTURE)), (160, 106))
    for _ in range(3000):
        w.write(small)
    w.release()
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "regpose", "infer", str(cfg), str(video), "--weights",
                             str(weights), "--out", str(out), "--batch-size", "1"],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    seen = ""              # the progress bar (stderr) counts the frames done: stop the run after a few
    while proc.poll() is None and time.time() < deadline:
        seen += os.read(proc.stderr.fileno(), 4096).decode(errors="replace")
        done = [int(n) for n in re.findall(r"(\d+)/3000", seen)]
        if done and done[-1] >= 3:
            break
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "Traceback" not in stderr
    assert "stopped early: processed 1 video" in stdout
    res, _ = _results(out)
    frames = res["videos"][str(video)]["frames"]
    assert 3 <= len(frames) < 3000 and [f["frame"] for f in frames] == list(range(len(frames)))
    assert res["videos"][str(video)]["num_frames"] == len(frames)


# ---- item 2: distinct image ids; person boxes by the stated file-name rule -----------------------------------
def test_image_ids_are_distinct_per_input():
    names = ["a/000000000785.jpg", "b.jpg", "785.png", "3.jpg", "c.jpg"]
    assert unique_image_ids(names) == [785, 786, 787, 3, 788]
    assert unique_image_ids(["x.jpg", "y.jpg"]) == [0, 1]


def test_results_list_boxes_go_only_to_the_file_that_spells_their_id(files, tmp_path, capsys):
    """The issue's case: 1.jpg and b.jpg, detections for image id 1. Main gave b.jpg the person of 1.jpg and
    wrote image ids [1, 1]; b.jpg's name is no id, so it gets no boxes and is reported."""
    cfg, weights = files["rle"]
    folder = _folder(tmp_path / "in", ["1.jpg", "b.jpg"])
    dets = tmp_path / "det.json"
    dets.write_text(json.dumps([_det([270.0, 45.0, 230.0, 335.0], 1)]))
    out = tmp_path / "out"
    assert main(["infer", str(cfg), str(folder), "--weights", str(weights), "--boxes", str(dets), "--out", str(out),
                 "--no-render", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "processed 1 image; skipped 1" in captured.out
    line = [l for l in captured.err.splitlines() if str(folder / "b.jpg") in l]
    assert len(line) == 1 and "det.json is a COCO results list" in line[0] and "not a number" in line[0]
    res, coco = _results(out)
    assert list(res["images"]) == [str(folder / "1.jpg")] and {e["image_id"] for e in coco} == {1}


def test_image_entries_match_by_file_name_and_ambiguous_inputs_are_skipped(files, tmp_path, capsys):
    """Detections with 'images' entries: each input takes the id (and boxes) of the entry whose file_name ends its
    path; two inputs matching one entry are both reported; an entry without boxes is reported, not skipped."""
    cfg, weights = files["rle"]
    folder = _folder(tmp_path / "in", ["cam1/x.jpg", "cam2/x.jpg", "b.jpg", "empty.jpg", "unknown.jpg"])
    box7, box1 = [100.0, 50.0, 200.0, 300.0], [270.0, 45.0, 230.0, 335.0]
    dets = tmp_path / "det.json"
    dets.write_text(json.dumps({"images": [{"id": 7, "file_name": "b.jpg"}, {"id": 1, "file_name": "x.jpg"},
                                           {"id": 9, "file_name": "in/empty.jpg"}],
                                "annotations": [_det(box7, 7), _det(box1, 1)]}))
    out = tmp_path / "out"
    assert main(["infer", str(cfg), str(folder), "--weights", str(weights), "--boxes", str(dets), "--out", str(out),
                 "--no-render", "--no-progress"]) == 0
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert "processed 2 images (1 without person boxes); skipped 3" in captured.out
    for name in ("cam1/x.jpg", "cam2/x.jpg"):
        assert any(l.startswith(f"skipped {folder / name}: no person boxes") and "all match image id 1" in l
                   for l in err)
    assert any(l.startswith(f"skipped {folder / 'unknown.jpg'}") and "no 'images' entry" in l for l in err)
    assert f"no person boxes for {folder / 'empty.jpg'}: det.json has none for image id 9" in err
    res, coco = _results(out)
    b = res["images"][str(folder / "b.jpg")]
    assert b["image_id"] == 7 and res["images"][str(folder / "empty.jpg")] == {
        "image_id": 9, "height": 425, "width": 640, "people": []}
    assert len(b["people"]) == 1 and np.allclose(b["people"][0]["bbox"], box7, atol=0.01)
    assert {e["image_id"] for e in coco} == {7}


def test_a_detections_file_serves_one_video_alone(files, tmp_path, capsys):
    cfg, weights = files["rle"]
    video = _black_video(tmp_path / "v.mp4")
    dets = tmp_path / "det.json"
    dets.write_text(json.dumps([_det([10.0, 10.0, 50.0, 70.0], 2)]))
    out = tmp_path / "out"
    code = main(["infer", str(cfg), str(video), str(PICTURE), "--weights", str(weights), "--boxes", str(dets),
                 "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "frame index" in err[0] and not out.exists()
    assert main(["infer", str(cfg), str(video), "--weights", str(weights), "--boxes", str(dets), "--out", str(out),
                 "--no-render", "--no-progress"]) == 0
    frames = _results(out)[0]["videos"][str(video)]["frames"]
    assert [len(f["people"]) for f in frames] == [0, 0, 1, 0, 0]          # frame 2 = image_id 2


def test_predictor_finds_boxes_by_the_same_rule(files, tmp_path):
    cfg, weights = files["rle"]
    folder = _folder(tmp_path / "in", ["1.jpg", "b.jpg"])
    dets = tmp_path / "det.json"
    dets.write_text(json.dumps([_det([270.0, 45.0, 230.0, 335.0], 1)]))
    pred = Predictor(cfg, weights, device="cpu", boxes=dets)
    assert len(pred(folder / "1.jpg")) == 1
    with pytest.raises(InputError, match="not a number"):
        pred(folder / "b.jpg")
    image = cv2.imread(str(PICTURE))
    with pytest.raises(InputError, match="pass image_id="):
        pred(image)
    assert len(pred(image, image_id=1)) == 1 and len(pred(image, image_id=2)) == 0
    assert DetectionBoxes(dets).image_id_for(folder / "0001.jpg") == 1


def test_a_video_failing_part_way_keeps_its_earlier_frames(files, tmp_path, capsys, monkeypatch):
    """Fault injection: the network refuses the second batch of frames (as ONNX Runtime does for a shape it
    cannot take). Main threw away the frames already done; they stay, and one line says where it stopped."""
    cfg, weights = files["querypose"]
    video = _black_video(tmp_path / "v.mp4", frames=6)
    real = Predictor.predict_batch
    calls = []

    def predict_batch(self, *a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise InputError("injected: this input size cannot be run")
        return real(self, *a, **kw)

    monkeypatch.setattr(Predictor, "predict_batch", predict_batch)
    out = tmp_path / "out"
    assert main(["infer", str(cfg), str(video), "--weights", str(weights), "--out", str(out), "--no-progress",
                 "--batch-size", "2"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"{video}: stopped after frame 1: injected: this input size cannot be run"]
    entry = _results(out)[0]["videos"][str(video)]
    assert [f["frame"] for f in entry["frames"]] == [0, 1] and entry["num_frames"] == 2


def test_drawings_never_overwrite_the_inputs(files, tmp_path, capsys):
    """Inputs under <out>/vis/<folder>/ would be replaced by their own drawings: refused before any work."""
    cfg, weights = files["querypose"]
    folder = _folder(tmp_path / "vis" / "photos", ["a.jpg"])
    before = (folder / "a.jpg").read_bytes()
    code = main(["infer", str(cfg), str(folder), "--weights", str(weights), "--out", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "would overwrite the input" in err[0]
    assert (folder / "a.jpg").read_bytes() == before and not (tmp_path / "results.json").exists()
