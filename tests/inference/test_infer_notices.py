"""What `regpose infer` / `export` tell a newcomer: a video whose frames the detections json has no boxes for is
said once (not silently empty, not once per frame); ONNX graph outputs carry the network's names."""
from __future__ import annotations

import json

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch

from regpose.cli import main
from _tiny import write_tiny
from conftest import REAL

PICTURE = REAL / "coco" / "000000000785.jpg"

pytestmark = pytest.mark.usefixtures("single_thread")


def test_video_frames_without_detections_are_said_once(tmp_path, capsys):
    cfg, weights = write_tiny("rle", tmp_path / "rle")
    video = tmp_path / "v.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (128, 96))
    for _ in range(5):
        writer.write(np.zeros((96, 128, 3), np.uint8))
    writer.release()
    dets = tmp_path / "det.json"                  # boxes for frame 2 only (image_id = frame index)
    dets.write_text(json.dumps([{"image_id": 2, "category_id": 1, "bbox": [10.0, 10.0, 50.0, 70.0], "score": 0.9}]))
    assert main(["infer", str(cfg), str(video), "--weights", str(weights), "--boxes", str(dets),
                 "--out", str(tmp_path / "out"), "--no-render", "--no-progress"]) == 0
    captured = capsys.readouterr()
    notices = [line for line in captured.err.splitlines() if "has no person boxes for frame" in line]
    assert notices == [f"{video}: det.json has no person boxes for frame 0 (a video's frames are image_id 0, 1, ...): "
                       f"frames without boxes get no people"]
    assert "1 video (5 frames, 4 without person boxes)" in captured.out


def test_infer_threads_are_honoured_and_reported(tmp_path, capsys):
    cfg, weights = write_tiny("rle", tmp_path / "rle")
    dets = tmp_path / "det.json"
    dets.write_text(json.dumps([{"image_id": 785, "category_id": 1, "bbox": [280.0, 44.0, 218.0, 346.0],
                                 "score": 0.9}]))
    torch.set_num_threads(2)
    assert main(["infer", str(cfg), str(PICTURE), "--weights", str(weights), "--boxes", str(dets), "--threads", "1",
                 "--out", str(tmp_path / "out"), "--no-render", "--no-progress"]) == 0
    assert torch.get_num_threads() == 1 and " on 1 threads); results:" in capsys.readouterr().out


@pytest.mark.parametrize("method, names", [("dekr", ["heatmap", "offset"]), ("rle", ["coords", "sigma"]),
                                           ("tfpose", ["coords"])])
def test_onnx_outputs_are_named(method, names, tmp_path):
    cfg, weights = write_tiny(method, tmp_path / method)
    onnx = tmp_path / f"{method}.onnx"
    assert main(["export", str(cfg), "--weights", str(weights), "--out", str(onnx)]) == 0
    assert [o.name for o in ort.InferenceSession(str(onnx)).get_outputs()] == names
