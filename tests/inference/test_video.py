"""regpose/inference/video.py: an mp4 written by VideoWriter reads back through VideoReader with its frame count,
frame rate, size and colours; frames of another size are resized; missing, empty and corrupt videos are one line
(FFmpeg's own complaints silenced); command-line inputs expand into images, videos and webcams."""
from __future__ import annotations

import numpy as np
import pytest

from regpose.errors import InputError
from regpose.inference.video import VideoReader, VideoWriter, discover_inputs

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255)]


def _frames(w: int = 96, h: int = 64) -> list[np.ndarray]:
    """Flat RGB frames of distinct colours, with a white square whose position tells the frame index."""
    out = []
    for i, c in enumerate(COLOURS):
        f = np.empty((h, w, 3), np.uint8)
        f[:] = c
        f[8:24, 8 + 10 * i:24 + 10 * i] = 255
        out.append(f)
    return out


def test_written_video_reads_back_with_its_frames_fps_and_size(tmp_path):
    path = tmp_path / "sub" / "clip.mp4"
    frames = _frames()
    with VideoWriter(path, fps=12.5) as w:
        for f in frames:
            w.write(f)
    assert w.frames == len(frames) and w.size == (96, 64) and path.stat().st_size > 0
    with VideoReader(str(path)) as r:
        assert (r.width, r.height, r.fps, r.fps_known, r.frame_count) == (96, 64, 12.5, True, len(frames))
        back = list(r)
    assert len(back) == len(frames)
    for i, (a, b) in enumerate(zip(frames, back)):
        assert b.shape == a.shape and b.dtype == np.uint8
        centre = b[40:60, 40:90].reshape(-1, 3).mean(0)
        assert np.abs(centre - np.array(COLOURS[i])).max() < 12, (i, centre)        # RGB order kept (lossy codec)
        assert b[16, 16 + 10 * i].min() > 200                                        # the moving square


def test_frames_of_another_size_are_resized_to_the_first(tmp_path):
    path = tmp_path / "mixed.mp4"
    with VideoWriter(path, fps=10) as w:
        w.write(_frames(96, 64)[0])
        w.write(_frames(192, 128)[1])                      # twice as large: resized, not refused
    with VideoReader(str(path)) as r:
        back = list(r)
    assert [f.shape for f in back] == [(64, 96, 3)] * 2
    assert np.abs(back[1][40:60, 40:90].reshape(-1, 3).mean(0) - np.array(COLOURS[1])).max() < 12


@pytest.mark.parametrize("content, message", [
    (None, "video not found: {path}"),
    (b"", "empty file: {path}"),
    (b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8, "cannot open {path} (unreadable or unsupported video)"),
])
def test_bad_videos_are_one_line(tmp_path, capfd, content, message):
    path = tmp_path / "bad.mp4"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError) as info:
        VideoReader(str(path))
    assert str(info.value) == message.format(path=path)
    assert capfd.readouterr().err == ""                    # no FFmpeg chatter around our line


def test_truncated_video_is_one_line(tmp_path, capfd):
    """A half-written mp4 (its index at the end is missing) cannot be opened: one line, nothing printed by FFmpeg."""
    good = tmp_path / "good.mp4"
    with VideoWriter(good, fps=10) as w:
        for f in _frames():
            w.write(f)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(InputError, match=r"^cannot open .*cut\.mp4 \(unreadable or unsupported video\)$"):
        VideoReader(str(cut))
    assert capfd.readouterr().err == ""


def test_inputs_expand_into_images_videos_and_webcams(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/b.jpg", "d/sub/a.PNG", "d/c.mp4", "d/notes.txt", "d/.hidden.jpg", "x.jpg"):
        (tmp_path / name).write_bytes(b"x")
    items, problems = discover_inputs([str(tmp_path / "d"), str(tmp_path / "x.jpg"), "0",
                                       str(tmp_path / "missing.jpg")])
    assert [(i.kind, i.out_name) for i in items] == [("image", "d/b"), ("video", "d/c"), ("image", "d/sub/a"),
                                                     ("image", "x"), ("webcam", "webcam0")]
    assert items[-1].source == 0 and items[-1].key == "webcam:0"
    assert problems == [f"skipped {tmp_path / 'missing.jpg'}: no such file, folder or webcam"]
    items, _ = discover_inputs([str(tmp_path / "x.jpg"), str(tmp_path / "x.jpg")])
    assert [i.out_name for i in items] == ["x", "x_1"]        # outputs never overwrite each other
