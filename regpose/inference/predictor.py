"""``regpose.Predictor``: a trained model (PyTorch checkpoint or ONNX export) as a function image -> people.

    from regpose import Predictor
    pred = Predictor("configs/querypose/querypose_r50_coco.yaml", "querypose_r50.pth", device="cpu")
    result = pred("photo.jpg")                  # PoseResult: boxes (N, 4) x1,y1,x2,y2, keypoints (N, K, 3), scores (N,)
    image = cv2.imread("photo.jpg")             # arrays say their channel order: color="bgr" (OpenCV) or "rgb"
    picture = pred.render(image, pred(image, color="bgr"), color="bgr")
    for index, frame, result in pred.video("clip.mp4", track=True): ...

Every method goes through its own test transform (resize / crop, normalisation), ``model.predict`` (flip test,
multi-scale, decoding, as ``cfg.test`` says) and ``model.finalize`` (top-down OKS-NMS), so results equal
``regpose test``'s for the same image. Top-down methods need person boxes: a detections json (``boxes=``), a
one-stage regpose detector (``detector=``), or boxes passed per call (x1, y1, x2, y2 like ``result.boxes``, or
another ``box_format``).
"""
from __future__ import annotations

import itertools
import logging
import os
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from ..config import Config, ConfigError, load_config, to_dict
from ..data.datasets import read_image
from ..data.keypoints import keypoint_layout
from ..checkpoint import load_model_weights
from ..errors import DataError, InputError
from ..models import build_model
from ..models.registry import get_method
from ..structures import PoseResult
from .boxes import BoxSource, DetectionBoxes, DetectorBoxes, GroundTruthBoxes, unique_image_ids
from .onnx_backend import OnnxRuntimeNetwork, attach_onnx
from .runner import PoseRunner
from .tracking import PoseTracker
from .video import VideoReader
from .visualize import Renderer

__all__ = ["Predictor", "as_rgb_image", "load_image", "resolve_device", "build_box_source", "detector_boxes",
           "boxes_to_xywh"]

#: channel orders an in-memory picture may declare (``color=``)
COLORS = ("rgb", "bgr")
#: per-call person box formats (torchvision.ops.box_convert names); results are always x1, y1, x2, y2
BOX_FORMATS = ("xyxy", "xywh", "cxcywh")

log = logging.getLogger("regpose.inference")


# ----------------------------------------------------------------------------------------------------------
# Images in
# ----------------------------------------------------------------------------------------------------------
def as_rgb_image(image: np.ndarray, color: str | None = "rgb", name: str = "image") -> np.ndarray:
    """Any in-memory picture -> contiguous uint8 (H, W, 3) RGB.

    Accepts (H, W) / (H, W, 1) grayscale, (H, W, 3) colour in the channel order ``color`` ('rgb' or 'bgr'), (H, W, 4)
    RGBA / BGRA (alpha dropped), uint8, 16-bit (scaled by 1/257), bool, and float images (0..1 when their maximum is
    <= 1, else 0..255). ``color=None`` means the caller did not say: a colour array is then an error rather than a
    guess, because OpenCV (BGR) and PIL / imageio (RGB) arrays look alike and a swapped picture still "works"."""
    if color not in (*COLORS, None):
        raise InputError(f"{name}: color: expected 'rgb' or 'bgr', got {color!r}")
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)) or a.size == 0:
        raise InputError(f"{name}: expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {a.shape}")
    if a.dtype == np.uint8:
        pass
    elif a.dtype == np.uint16:
        a = (a.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    elif a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif np.issubdtype(a.dtype, np.number):
        f = np.nan_to_num(a.astype(np.float32))
        if f.max(initial=0.0) <= 1.0:
            f = f * 255.0
        a = (np.clip(f, 0, 255) + 0.5).astype(np.uint8)
    else:
        raise InputError(f"{name}: unsupported image dtype {a.dtype}")
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    else:
        if color is None:
            raise InputError(f"{name}: an array does not say its channel order: pass color='bgr' (cv2.imread) or "
                             f"color='rgb' (PIL, imageio, regpose.inference.load_image)")
        a = a[..., :3]
        if color == "bgr":
            a = a[..., ::-1]
    return np.ascontiguousarray(a)


def load_image(path: str | os.PathLike) -> np.ndarray:
    """An image file -> uint8 (H, W, 3) RGB with OpenCV (EXIF orientation applied, grayscale expanded, alpha
    dropped, 16-bit scaled to 8-bit). Unreadable files raise :class:`InputError` naming the file."""
    try:
        return read_image(path)
    except DataError as e:
        raise InputError(str(e)) from None


def boxes_to_xywh(boxes, box_format: str = "xyxy", name: str = "boxes") -> np.ndarray:
    """Person boxes (n, 4) or (n, 5) with an optional score column, in ``box_format`` ('xyxy': x1, y1, x2, y2 as
    ``PoseResult.boxes``; 'xywh': COCO; 'cxcywh'), -> (n, 5) x, y, w, h, score (score 1 when not given): the
    top-down crops' format. Converted with :func:`torchvision.ops.box_convert`."""
    from torchvision.ops import box_convert

    if box_format not in BOX_FORMATS:
        raise InputError(f"box_format: expected one of {', '.join(BOX_FORMATS)}, got {box_format!r}")
    b = np.asarray(boxes, dtype=np.float64)
    if b.size == 0:
        return np.zeros((0, 5))
    if b.ndim != 2 or b.shape[1] not in (4, 5):
        raise InputError(f"{name}: expected (n, 4) or (n, 5) {box_format}[, score], got shape {b.shape}")
    xywh = box_convert(torch.from_numpy(b[:, :4]), box_format, "xywh").numpy()
    score = b[:, 4:] if b.shape[1] == 5 else np.ones((len(b), 1))
    return np.concatenate([xywh, score], axis=1)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'auto' (or None) -> CUDA when available, else CPU; a CUDA request without CUDA is a clear error."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"--device: expected auto, cpu, cuda or cuda:N, got {device!r}") from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine (use cpu)")
    return d


# ----------------------------------------------------------------------------------------------------------
# The predictor
# ----------------------------------------------------------------------------------------------------------
class Predictor:
    """A trained regpose model for images and videos.

    config:          YAML path, dict or :class:`regpose.config.Config`; ``overrides`` are dotted ``key=value``
    weights:         a checkpoint (``.pth``: ours, or an official DEKR / Poseur / QueryPose file, recognised by
                     its keys and converted in memory) or, for ``backend='onnx'``, the ``.onnx``
                     file of ``regpose export`` (the backend follows the suffix when not given)
    device:          'auto', 'cpu', 'cuda', 'cuda:N'
    flip / scales / score_threshold / max_people:  override ``cfg.test`` (flip test, multi-scale factors,
                     people below the instance score dropped, at most this many people per image)
    boxes:           top-down methods: a json of person detections (COCO format; a file's boxes found by its name,
                     see :meth:`DetectionBoxes.image_id_for`, or by the ``image_id`` argument) or a callable
                     ``(image_id, rgb) -> (n, 4|5) x1, y1, x2, y2[, score]`` (the format of ``result.boxes``)
    detector / detector_weights:  top-down methods: a one-stage or bottom-up regpose config (+ weights) whose
                     people give the boxes
    batch_size:      at most this many images (whole-image methods) or crops (top-down) per network call
    """

    def __init__(self, config, weights: str | os.PathLike | None = None, device: str | torch.device = "auto", *,
                 backend: str | None = None, overrides: list[str] | dict | None = None, flip: bool | None = None,
                 scales: Sequence[float] | None = None, score_threshold: float | None = None,
                 max_people: int | None = None, boxes=None, detector: str | None = None,
                 detector_weights: str | None = None, det_score_threshold: float | None = None,
                 batch_size: int | None = None, threads: int | None = None):
        if isinstance(config, Config):
            cfg = config if not overrides else load_config(to_dict(config), overrides)
        else:
            cfg = load_config(config, overrides)
        t = cfg.test
        if flip is not None:
            t.flip = bool(flip)
        if scales:
            t.scales = [float(s) for s in scales]
        if score_threshold is not None:
            t.score_threshold = float(score_threshold)
        if max_people is not None:
            t.max_people = int(max_people)
        if det_score_threshold is not None:
            t.det_score_threshold = float(det_score_threshold)
        if threads:
            torch.set_num_threads(int(threads))
        self.cfg = cfg
        self.method = cfg.method
        self.spec = get_method(cfg.method)
        self.family = self.spec.family
        self.device = resolve_device(device)
        self.keypoint_meta = keypoint_layout(cfg.data)

        weights = str(weights) if weights else ""
        self.backend = backend or ("onnx" if weights.lower().endswith(".onnx") else "torch")
        if self.backend not in ("torch", "onnx"):
            raise ConfigError(f"--backend: expected 'torch' or 'onnx', got {self.backend!r}")
        model = build_model(cfg)
        if self.backend == "torch":
            if weights.lower().endswith(".onnx"):
                raise ConfigError(f"{weights} is an ONNX model: use backend 'onnx' (--backend onnx)")
            if weights:
                load_model_weights(model, weights)
            else:
                log.warning("Predictor: no weights given, the %s network is randomly initialised", cfg.method)
            model.to(self.device)
        else:
            if not weights:
                raise ConfigError("the ONNX backend needs the exported model: weights=model.onnx "
                                  "(regpose export CONFIG --weights W --out model.onnx)")
            attach_onnx(model, OnnxRuntimeNetwork(weights, self.device, threads), cfg.method)
        self.model = model.eval()
        self.weights = weights
        self.num_keypoints = model.num_keypoints
        topdown = self.family == "topdown"
        self.batch_size = int(batch_size or max(32 if topdown else 8, t.batch_size))
        self.runner = PoseRunner(model, cfg, self.batch_size, self.device if self.backend == "torch" else "cpu")
        self.renderer = Renderer.for_config(cfg)       # solid-joint threshold and score range of the method
        self.box_source = self._box_source(boxes, detector, detector_weights) if topdown else None

    # ---- set-up helpers --------------------------------------------------------------------------------
    def _box_source(self, boxes, detector, detector_weights) -> BoxSource | None:
        """The box source of the arguments (a detections json or a callable; a detector config), else of
        ``cfg.test``; None when neither names one (boxes must then come with every call)."""
        t = self.cfg.test
        if boxes is not None and detector:
            raise ConfigError("give person boxes either as a detections json (--boxes) or as a detector "
                              "(--detector), not both")
        if boxes is not None and callable(boxes):     # returns x1, y1, x2, y2[, score] like result.boxes
            return lambda image_id, image: boxes_to_xywh(boxes(image_id, image), "xyxy", "boxes callable")
        if boxes is not None:
            t.boxes, t.detections = "detections", str(boxes)
        elif detector:
            t.boxes, t.detector_config, t.detector_weights = "model", str(detector), str(detector_weights or "")
        if (t.boxes == "detections" and t.detections) or (t.boxes == "model" and t.detector_config):
            return build_box_source(self.cfg, None, self.device)
        return None

    def require_boxes(self) -> None:
        """Top-down methods: raise the one-line error a user sees when no person-box source was given."""
        if self.family == "topdown" and self.box_source is None:
            raise ConfigError(f"'{self.method}' is a top-down method and needs person boxes: pass --boxes DET.json "
                              f"(COCO results of person detections) or --detector CONFIG --detector-weights W "
                              f"(a one-stage regpose model)")

    # ---- inference -------------------------------------------------------------------------------------
    def __call__(self, image, *, color: str | None = None, boxes: np.ndarray | None = None,
                 box_format: str = "xyxy", image_id: int | None = None) -> PoseResult:
        """People in one image, in its pixel coordinates; ``result.boxes`` are x1, y1, x2, y2.

        image:       a file path, or an array whose channel order ``color`` names: 'bgr' (``cv2.imread``) or 'rgb'
                     (PIL, imageio). A colour array without ``color`` is an error, never a guess (grayscale needs
                     none); see :func:`as_rgb_image`.
        boxes:       top-down methods: this image's person boxes (n, 4) or (n, 5) with a score column, overriding
                     the box source. ``box_format`` 'xyxy' (default: x1, y1, x2, y2, the format of
                     ``result.boxes``, so a result's boxes can be passed back), 'xywh' (COCO) or 'cxcywh'."""
        return self.predict_batch([image], color=color, boxes=None if boxes is None else [boxes],
                                  box_format=box_format, image_ids=None if image_id is None else [image_id])[0]

    def predict_batch(self, images: Sequence, *, color: str | None = None, boxes: Sequence | None = None,
                      box_format: str = "xyxy", image_ids: Sequence[int] | None = None,
                      file_names: Sequence[str] | None = None) -> list[PoseResult]:
        """Several images at once (``batch_size`` per network call); one :class:`PoseResult` each (arguments as
        :meth:`__call__`, ``boxes`` one entry per image). Image ids (what a detections json's boxes are looked up
        by) default to :meth:`image_ids`."""
        if image_ids is not None:
            ids = [int(i) for i in image_ids]
        else:
            ids = self.image_ids(images, find_boxes=boxes is None)
        rgbs, names = [], []
        for i, img in enumerate(images):
            if isinstance(img, (str, os.PathLike)):
                rgbs.append(load_image(img))
                names.append(str(img))
            else:
                rgbs.append(as_rgb_image(img, color, f"image {i}"))
                names.append("")
        if file_names is not None:
            names = [str(n) for n in file_names]
        per_image = None
        if self.family == "topdown":
            given = [None if boxes is None or boxes[i] is None else boxes_to_xywh(boxes[i], box_format, f"boxes[{i}]")
                     for i in range(len(rgbs))]
            per_image = [self._person_boxes(img, iid, g) for img, iid, g in zip(rgbs, ids, given)]
        with torch.inference_mode():
            return self.runner(rgbs, ids, names, per_image)

    def image_ids(self, images: Sequence, find_boxes: bool = True) -> list[int]:
        """Ids of images given without ``image_ids``. When the boxes are to be found in a detections json, a file's
        id is the one its boxes are filed under (:meth:`DetectionBoxes.image_id_for`) and an in-memory picture must
        be given its id; otherwise distinct ids from the file names (:func:`unique_image_ids`)."""
        files = [str(img) if isinstance(img, (str, os.PathLike)) else "" for img in images]
        if not (find_boxes and isinstance(self.box_source, DetectionBoxes)):
            return unique_image_ids(files)
        for i, f in enumerate(files):
            if not f:
                raise InputError(f"image {i}: pass image_id= (its id in {self.box_source.path}) so its person boxes "
                                 f"can be found")
        return [self.box_source.image_id_for(f) for f in files]

    def _person_boxes(self, image: np.ndarray, image_id: int, given: np.ndarray | None) -> np.ndarray:
        """(n, 5) x, y, w, h, score: the boxes given for this image (already converted), else the box source's."""
        if given is not None:
            return given
        self.require_boxes()
        return np.asarray(self.box_source(image_id, image), dtype=np.float64).reshape(-1, 5)

    # ---- pictures, video, tracking ------------------------------------------------------------------------
    def render(self, image, result: PoseResult, *, color: str | None = None, **options) -> np.ndarray:
        """``image`` with ``result`` drawn on it, uint8 in the channel order of the input: a file path gives RGB, an
        array is given and returned in ``color`` ('rgb' or 'bgr', required for colour arrays as in
        :meth:`__call__`). Options: kpt_threshold
        (default: the method's, :func:`visualize.display_defaults`), score_threshold, show_boxes, show_scores,
        radius, thickness (see :func:`regpose.drawing.draw_poses`); None keeps the default."""
        img = load_image(image) if isinstance(image, (str, os.PathLike)) else as_rgb_image(image, color)
        out = self.renderer(img, result, **options)
        return out[..., ::-1].copy() if color == "bgr" else out

    def tracker(self, **options):
        """A :class:`regpose.inference.tracking.PoseTracker` for this keypoint layout."""
        return PoseTracker(self.keypoint_meta.sigmas, **options)

    def predict_frames(self, frames: Iterable[np.ndarray], batch_size: int | None = None, tracker=None,
                       start_index: int = 0) -> Iterator[tuple[int, np.ndarray, PoseResult]]:
        """Frames (RGB arrays) -> ``(index, frame, result)`` in order, ``batch_size`` frames per call; with a
        ``tracker`` every result carries ``extras["track_id"]``. Frame indices are the image ids (detections)."""
        n = max(1, int(batch_size or 4))
        pending: list[np.ndarray] = []
        index = start_index

        def flush():
            nonlocal index
            results = self.predict_batch(pending, color="rgb", image_ids=list(range(index, index + len(pending))))
            for frame, r in zip(pending, results):
                yield index, frame, tracker.update(r) if tracker is not None else r
                index += 1
            pending.clear()

        for frame in frames:
            pending.append(as_rgb_image(frame, "rgb", name=f"frame {index + len(pending)}"))
            if len(pending) == n:
                yield from flush()
        if pending:
            yield from flush()

    def video(self, source: str | int, batch_size: int | None = None, track: bool = False,
              max_frames: int | None = None) -> Iterator[tuple[int, np.ndarray, PoseResult]]:
        """A video file or webcam index -> ``(index, frame RGB, result)`` per frame (OpenCV decoding, batched
        inference, optional OKS tracking)."""
        with VideoReader(source) as reader:
            frames = iter(reader) if max_frames is None else itertools.islice(reader, int(max_frames))
            yield from self.predict_frames(frames, batch_size, self.tracker() if track else None)


def detector_boxes(config, weights: str = "", score_threshold: float = 0.0, device="cpu") -> DetectorBoxes:
    """Person boxes from a whole-image regpose model (one-stage or bottom-up: ``config`` + ``weights``), run by its
    own :class:`Predictor` (its test transform, flip / scales, score threshold and ``max_people``)."""
    cfg = config if isinstance(config, Config) else load_config(config)
    if get_method(cfg.method).family == "topdown":   # before the model is built (and warns about its weights)
        raise ConfigError(f"--detector: {config} is a top-down method ('{cfg.method}'); boxes must come from a "
                          f"one-stage or bottom-up model")
    predictor = Predictor(cfg, weights or None, device)
    return DetectorBoxes(lambda image, image_id: predictor(image, color="rgb", image_id=image_id), score_threshold)


def build_box_source(cfg, records=None, device: str | torch.device = "cpu") -> BoxSource:
    """The box source ``cfg.test`` asks for: ``gt`` (needs annotation ``records``), ``detections`` (json) or
    ``model`` (a one-stage / bottom-up detector config + weights, :func:`detector_boxes`)."""
    t = cfg.test
    if t.boxes == "gt":
        if records is None:
            raise ConfigError("test.boxes: 'gt' needs annotations; for plain images use test.boxes=detections "
                              "(test.detections=FILE) or test.boxes=model (test.detector_config=CONFIG)")
        return GroundTruthBoxes(records)
    if t.boxes == "detections":
        if not t.detections:
            raise ConfigError("test.detections: a COCO-results json of person boxes is required when test.boxes is "
                              "'detections'")
        return DetectionBoxes(t.detections, t.det_score_threshold)
    if t.boxes == "model":
        if not t.detector_config:
            raise ConfigError("test.detector_config: a one-stage regpose config is required when test.boxes is "
                              "'model'")
        return detector_boxes(t.detector_config, t.detector_weights, t.det_score_threshold, device)
    raise ConfigError(f"test.boxes: expected 'gt', 'detections' or 'model', got {t.boxes!r}")
