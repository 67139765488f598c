"""Inputs of ``regpose infer``: images, folders (recursively), video files and webcams, read with OpenCV; and the
mp4 writer for rendered videos (same fps and frame size as the input)."""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from ..errors import InputError

__all__ = ["IMAGE_EXTENSIONS", "VIDEO_EXTENSIONS", "InputItem", "discover_inputs", "VideoReader", "VideoWriter"]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".jp2",
                              ".pbm", ".pgm", ".ppm", ".pnm", ".pxm", ".sr", ".ras", ".hdr", ".pic", ".exr"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".avi", ".mov", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv",
                              ".3gp", ".ts", ".mts", ".ogv"})
DEFAULT_FPS = 25.0


def _quiet_video_io() -> None:
    """Bad inputs get our one-line messages only: silence OpenCV's own warnings and FFmpeg's log level (the
    variable only counts before OpenCV first initialises FFmpeg; :func:`_native_stderr_silenced` covers the rest)."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    except AttributeError:  # pragma: no cover - OpenCV builds without the logging module
        pass


@contextlib.contextmanager
def _native_stderr_silenced():
    """Redirect file descriptor 2 to /dev/null while native video code runs (FFmpeg prints demuxer / decoder
    complaints such as 'moov atom not found' straight to fd 2); Python's own stderr is untouched."""
    try:
        saved = os.dup(2)
    except OSError:          # no usable fd 2: nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


@dataclass
class InputItem:
    """One thing to run on. ``key`` names it in the results json (the path as given / found, or ``webcam:N``);
    ``out_name`` is its relative output name without extension (folder inputs keep their sub-folders)."""
    kind: str            # "image", "video" or "webcam"
    source: str | int    # file path or webcam index
    key: str
    out_name: str


def _kind(path: Path) -> str:
    return "video" if path.suffix.lower() in VIDEO_EXTENSIONS else "image"


def discover_inputs(inputs: list[str]) -> tuple[list[InputItem], list[str]]:
    """Expand command-line inputs into items (folders recursively, sorted; only image / video extensions are
    taken from folders) and one-line messages for inputs that do not exist."""
    items: list[InputItem] = []
    problems: list[str] = []
    used: set[str] = set()

    def unique(name: str) -> str:
        base, i = name, 1
        while name in used:
            name = f"{base}_{i}"
            i += 1
        used.add(name)
        return name

    for text in inputs:
        p = Path(text).expanduser()
        if not p.exists() and text.isdigit():
            items.append(InputItem("webcam", int(text), f"webcam:{text}", unique(f"webcam{text}")))
        elif p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")
                           and f.suffix.lower() in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS)
            if not found:
                problems.append(f"skipped {p}: no image or video files in this folder")
            root = p.resolve().name or "input"
            for f in found:
                rel = f.relative_to(p).with_suffix("")
                items.append(InputItem(_kind(f), str(f), str(f), unique(str(Path(root) / rel))))
        elif p.is_file():
            items.append(InputItem(_kind(p), str(p), str(p), unique(p.stem)))
        else:
            problems.append(f"skipped {text}: no such file, folder or webcam")
    return items, problems


class VideoReader:
    """Frames of a video file or webcam as RGB uint8 arrays (OpenCV ``VideoCapture``)."""

    def __init__(self, source: str | int):
        self.source = source
        name = f"webcam {source}" if isinstance(source, int) else str(source)
        if isinstance(source, str) and not Path(source).is_file():
            raise InputError(f"video not found: {source}")
        if isinstance(source, str) and Path(source).stat().st_size == 0:
            raise InputError(f"empty file: {source}")
        _quiet_video_io()
        with _native_stderr_silenced():
            self.cap = cv2.VideoCapture(source)
            opened = self.cap.isOpened()
        if not opened:
            self.cap.release()
            raise InputError(f"cannot open {name} (unreadable or unsupported video)")
        fps = float(self.cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps_known = math.isfinite(fps) and fps > 0
        self.fps = fps if self.fps_known else DEFAULT_FPS
        count = self.cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.frame_count = int(count) if math.isfinite(count) and count > 0 and isinstance(source, str) else None
        self.width = int(self.cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(self.cap.get(cv2.CAP_PROP_FRAME_HEIGHT))

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            with _native_stderr_silenced():
                ok, frame = self.cap.read()
            if not ok or frame is None:
                return
            if frame.ndim == 2:
                frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
            else:
                frame = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB if frame.shape[2] == 3 else cv2.COLOR_BGRA2RGB)
            yield frame

    def close(self) -> None:
        self.cap.release()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class VideoWriter:
    """An mp4 (MPEG-4 Part 2, 'mp4v': always available in OpenCV's FFmpeg) written frame by frame from RGB
    arrays; the size is fixed by the first frame unless given."""

    def __init__(self, path: str | os.PathLike, fps: float, size: tuple[int, int] | None = None,
                 fourcc: str = "mp4v"):
        self.path = Path(path)
        self.fps = float(fps)
        self.fourcc = fourcc
        self.size = size           # (width, height)
        self.writer = None
        self.frames = 0

    def _open(self, w: int, h: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*self.fourcc), self.fps, (w, h))
        if not self.writer.isOpened():
            raise InputError(f"cannot write video {self.path} (codec '{self.fourcc}' unavailable)")
        self.size = (w, h)

    def write(self, frame_rgb: np.ndarray) -> None:
        h, w = frame_rgb.shape[:2]
        if self.writer is None:
            self._open(*(self.size or (w, h)))
        if (w, h) != self.size:
            frame_rgb = cv2.resize(frame_rgb, self.size, interpolation=cv2.INTER_AREA)
        self.writer.write(cv2.cvtColor(np.ascontiguousarray(frame_rgb), cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
