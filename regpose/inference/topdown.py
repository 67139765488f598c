"""The top-down pipeline every top-down method shares (Poseur, RLE, TFPose).

  person boxes (ground truth, a COCO-results detections json, or any one-stage regpose model)
    -> one raw sample per box -> the method's own transform (centre/scale, affine crop, normalisation)
    -> batches -> ``model.predict`` (one person per crop, mapped back to image pixels through ``meta["inverse"]``)
    -> per image ``model.finalize``: rescoring + OKS-NMS (:func:`regpose.ops.topdown_finalize`)

Post-processing follows mmpose's ``TopDownCocoDataset.evaluate`` as the released Poseur models were evaluated
(Poseur spec 1.6): instance score = box score + mean + max of the keypoint scores (``rle_score=True``), then
greedy OKS-NMS at 0.9 with the dataset's sigmas and the crop area (200 s_x)(200 s_y).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from ..errors import ConfigError
from ..structures import PoseResult, to_coco_results

__all__ = ["BoxSource", "GroundTruthBoxes",
           "DetectionBoxes", "ModelBoxes", "boxes_from_model", "people_boxes", "build_box_source", "model_detections",
           "TopDownPredictor", "write_results", "image_id_from_name", "unique_image_ids"]


# ----------------------------------------------------------------------------------------------------------
# Where person boxes come from: every source maps (image_id, RGB image) -> (n, 5) x, y, w, h, score
# ----------------------------------------------------------------------------------------------------------
BoxSource = Callable[[int, np.ndarray], np.ndarray]


class GroundTruthBoxes:
    """Annotated boxes, cleaned as mmpose does (Poseur spec 1.6; :func:`regpose.data.datasets.clean_gt_boxes`),
    score 1."""

    def __init__(self, records):
        from ..data.datasets import clean_gt_boxes

        self.boxes = {}
        for r in records:
            _, xywh = clean_gt_boxes(r)
            self.boxes[int(r.image_id)] = np.concatenate([xywh, np.ones((len(xywh), 1))], 1)

    def __call__(self, image_id: int, image: np.ndarray | None = None) -> np.ndarray:
        return self.boxes.get(int(image_id), np.zeros((0, 5)))


class DetectionBoxes:
    """Person detections from a json (e.g. ``COCO_val2017_detections_AP_H_56_person.json``), boxes scoring below
    ``score_threshold`` dropped (mmpose ``det_bbox_thr``). Which image a file is: :meth:`image_id_for`."""

    def __init__(self, path: str | os.PathLike, score_threshold: float = 0.0):
        from ..data.datasets import read_detections

        self.path = str(path)
        self.boxes, files = read_detections(path, score_threshold)
        self.by_name: dict[str, list[tuple[tuple[str, ...], int]]] | None = None
        if files is not None:
            self.by_name = {}
            for image_id, name in files.items():
                parts = Path(name).parts
                self.by_name.setdefault(parts[-1] if parts else "", []).append((parts, image_id))

    def __call__(self, image_id: int, image: np.ndarray | None = None) -> np.ndarray:
        return self.boxes.get(int(image_id), np.zeros((0, 5)))

    def image_id_for(self, path: str | os.PathLike) -> int:
        """The detections' image id of an image file. A detections json with ``images`` entries: the entry whose
        ``file_name`` is the end of the file's path (``val2017/000000000785.jpg`` or ``000000000785.jpg`` names
        ``/data/coco/val2017/000000000785.jpg``; the longest such match wins). A COCO results list (ids only): the
        number the file name spells, as COCO names its images (``000000000785.jpg`` -> 785). A file that matches
        no entry, or several equally, raises :class:`InputError`."""
        from ..errors import InputError

        name = Path(self.path).name
        if self.by_name is None:
            image_id = image_id_from_name(path, None)
            if image_id is None:
                raise InputError(f"no person boxes: {name} is a COCO results list, which names images by id only, "
                                 f"and this file name is not a number (name images by their id as COCO does, e.g. "
                                 f"000000000785.jpg, or give detections with 'images' entries: id, file_name)")
            return image_id
        parts = Path(os.path.abspath(path)).parts
        found = [(len(p), i) for p, i in self.by_name.get(parts[-1], []) if parts[len(parts) - len(p):] == p]
        best = [i for n, i in found if n == max(n for n, _ in found)]
        if not best:
            raise InputError(f"no person boxes: no 'images' entry of {name} has this file name")
        if len(best) > 1:
            raise InputError(f"no person boxes: {len(best)} 'images' entries of {name} have this file name (ids "
                             f"{', '.join(map(str, sorted(best)))})")
        return best[0]


def _raw_image_sample(image: np.ndarray, image_id: int, file_name: str, num_keypoints: int) -> dict:
    """A whole-image raw sample (the dataset format of :mod:`regpose.data.datasets`) without annotations."""
    return {"image": image, "image_id": int(image_id), "file_name": file_name, "sample_index": 0,
            "orig_size": (int(image.shape[0]), int(image.shape[1])),
            "keypoints": np.zeros((0, num_keypoints, 3), np.float32), "boxes": np.zeros((0, 4), np.float32),
            "areas": np.zeros(0, np.float32), "iscrowd": np.zeros(0, bool), "num_keypoints": np.zeros(0, np.int64),
            "ann_ids": np.zeros(0, np.int64)}


@torch.no_grad()
def boxes_from_model(model, images: Iterable[np.ndarray], transform: Callable, test_cfg,
                     score_threshold: float = 0.0) -> list[np.ndarray]:
    """Person boxes from a built whole-image (one-stage / bottom-up) regpose model: each person's box (or the
    extent of its keypoints when the method has no boxes) and instance score -> per image (n, 5) xywh + score."""
    from ..data.collate import collate

    device = next(model.parameters()).device
    out = []
    for img in images:
        sample = transform(_raw_image_sample(img, 0, "", model.num_keypoints))
        batch = collate([sample], getattr(model, "size_divisibility", 1))
        batch["images"] = batch["images"].to(device)
        out.append(people_boxes(model.finalize(model.predict(batch, test_cfg)[0], batch["metas"][0]),
                                score_threshold))
    return out


def people_boxes(result: PoseResult, score_threshold: float = 0.0) -> np.ndarray:
    """A whole-image model's people as person boxes: each person's box (the extent of its keypoints when the method
    has no box) and instance score -> (n, 5) x, y, w, h, score; people below ``score_threshold`` dropped."""
    boxes = np.asarray(result.boxes, dtype=np.float64).reshape(-1, 4)
    if len(result):
        kp = result.keypoints[..., :2].astype(np.float64)
        no_box = ~np.isfinite(boxes).all(1) | ((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]))
        boxes[no_box] = np.concatenate([kp.min(1), kp.max(1)], 1)[no_box]
    keep = np.asarray(result.scores) >= score_threshold
    b, s = boxes[keep], np.asarray(result.scores, dtype=np.float64)[keep]
    return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2], s[:, None]], 1) if len(b) else np.zeros((0, 5))


class ModelBoxes:
    """Boxes from a one-stage regpose detector (``test.detector_config`` + ``test.detector_weights``), run on the
    whole image with its own test transform."""

    def __init__(self, detector_config: str, detector_weights: str = "", score_threshold: float = 0.0,
                 device: str | torch.device = "cpu"):
        from ..config import ConfigError, load_config
        from ..models import build_model
        from ..models.registry import get_method

        self.cfg = load_config(detector_config)
        spec = get_method(self.cfg.method)
        if spec.family == "topdown":
            raise ConfigError(f"test.detector_config: {detector_config} is a top-down method ('{self.cfg.method}'); "
                              "boxes must come from a one-stage or bottom-up model")
        self.model = build_model(self.cfg)
        if detector_weights:
            from ..engine.checkpoint import load_model_weights
            load_model_weights(self.model, detector_weights)
        self.model.to(device).eval()
        self.transform = spec.transform(self.cfg, False)
        self.score_threshold = score_threshold

    def __call__(self, image_id: int, image: np.ndarray) -> np.ndarray:
        return boxes_from_model(self.model, [image], self.transform, self.cfg.test, self.score_threshold)[0]


def build_box_source(cfg, records=None, device: str | torch.device = "cpu") -> BoxSource:
    """The box source ``cfg.test`` asks for: ``gt`` (needs annotation ``records``), ``detections`` (json) or
    ``model`` (a one-stage detector config + weights)."""
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
            raise ConfigError("test.detector_config: a one-stage regpose config is required when test.boxes is 'model'")
        return ModelBoxes(t.detector_config, t.detector_weights, t.det_score_threshold, device)
    raise ConfigError(f"test.boxes: expected 'gt', 'detections' or 'model', got {t.boxes!r}")


def model_detections(cfg, records, device: str | torch.device = "cpu") -> dict[int, np.ndarray]:
    """``{image_id: (n, 5)}`` boxes of a detector model over annotation ``records`` (for a
    :class:`regpose.data.datasets.TopDownDataset` with ``boxes='detections'``, i.e. ``test.boxes: model``)."""
    from ..data.datasets import read_image

    source = build_box_source(cfg, records, device)
    return {int(r.image_id): source(int(r.image_id), read_image(r.file_name)) for r in records}


# ----------------------------------------------------------------------------------------------------------
# Crops -> predictions -> people per image
# ----------------------------------------------------------------------------------------------------------
def image_id_from_name(path: str | os.PathLike, fallback: int | None) -> int | None:
    """COCO file names are zero-padded image ids (000000000785.jpg -> 785); otherwise ``fallback``."""
    stem = Path(path).stem
    return int(stem) if stem.isascii() and stem.isdigit() else fallback


def unique_image_ids(paths: Iterable[str | os.PathLike]) -> list[int]:
    """One distinct image id per input: the number its file name spells (COCO: 000000000785.jpg -> 785) unless an
    earlier input spells the same number; every other input (a name that is no number, or a repeated one) takes
    the next id above all spelled numbers, in input order. Ids label results only; they never pick person boxes
    (see :meth:`DetectionBoxes.image_id_for`)."""
    spelled = [image_id_from_name(p, None) for p in paths]
    fresh = max((n for n in spelled if n is not None), default=-1) + 1
    used: set[int] = set()
    ids = []
    for n in spelled:
        if n is None or n in used:
            n, fresh = fresh, fresh + 1
        used.add(n)
        ids.append(n)
    return ids


class TopDownPredictor:
    """Method-agnostic top-down inference: boxes -> the method's own test transform (one crop per box) -> batched
    ``model.predict`` -> ``model.finalize`` per image. Works for every registered top-down method."""

    def __init__(self, model, cfg, boxes: BoxSource, batch_size: int | None = None):
        from ..models.registry import get_method

        spec = get_method(cfg.method)
        if spec.family != "topdown":
            raise ValueError(f"TopDownPredictor: '{cfg.method}' is a {spec.family} method, not top-down")
        self.model, self.cfg, self.boxes = model, cfg, boxes
        self.transform = spec.transform(cfg, False)
        self.batch_size = int(batch_size or max(1, cfg.test.batch_size))
        self.num_keypoints = model.num_keypoints

    def _samples(self, image: np.ndarray, image_id: int, file_name: str, dets: np.ndarray) -> Iterator[dict]:
        for j, d in enumerate(np.asarray(dets, dtype=np.float64).reshape(-1, 5)):
            raw = _raw_image_sample(image, image_id, file_name, self.num_keypoints)
            raw.update(sample_index=j, box_xywh=d[:4].copy(), box=np.array([d[0], d[1], d[0] + d[2], d[1] + d[3]]),
                       box_score=float(d[4]), person_index=-1)
            yield self.transform(raw)

    @torch.no_grad()
    def __call__(self, image: np.ndarray, image_id: int = 0, file_name: str = "",
                 boxes: np.ndarray | None = None) -> PoseResult:
        """People in one RGB uint8 image (original pixels). ``boxes`` (n, 5) xywh + score overrides the source."""
        from ..data.collate import collate

        dets = self.boxes(image_id, image) if boxes is None else boxes
        if len(dets) == 0:
            return PoseResult.empty(self.num_keypoints)
        self.model.eval()
        device = next(self.model.parameters()).device
        parts, meta0, pending = [], None, []
        for sample in self._samples(image, image_id, file_name, dets):
            pending.append(sample)
            if len(pending) == self.batch_size:
                parts += self._predict(collate(pending), device)
                meta0 = meta0 or pending[0]["meta"]
                pending = []
        if pending:
            parts += self._predict(collate(pending), device)
            meta0 = meta0 or pending[0]["meta"]
        result = PoseResult.concat(parts, self.num_keypoints)
        return self.model.finalize(result, meta0)

    def _predict(self, batch: dict, device) -> list[PoseResult]:
        batch["images"] = batch["images"].to(device)
        return self.model.predict(batch, self.cfg.test)

    def predict_files(self, files: Iterable[str | os.PathLike], image_ids: dict[str, int] | None = None
                      ) -> dict[int, PoseResult]:
        """Every image file -> finalized people, keyed by image id (from ``image_ids`` by file name, else
        :func:`unique_image_ids`); two files given the same id is an error (one result would replace the other)."""
        from ..data.datasets import read_image
        from ..errors import InputError

        files = list(files)
        fallback = unique_image_ids(files)
        out, source = {}, {}
        for f, default in zip(files, fallback):
            image_id = (image_ids or {}).get(Path(f).name, default)
            if image_id in out:
                raise InputError(f"{f}: image id {image_id} is also the id of {source[image_id]}")
            source[image_id] = f
            out[image_id] = self(read_image(f), image_id, str(f))
        return out


def write_results(results: dict[int, PoseResult], path: str | os.PathLike, score_threshold: float = 0.0,
                  max_people: int = 100) -> Path:
    """COCO keypoint results json of ``{image_id: PoseResult}`` (written atomically)."""
    entries = []
    for image_id in sorted(results):
        r = results[image_id]
        if len(r):
            r = r.select(np.nonzero(r.scores >= score_threshold)[0]).sorted()
            r = r.select(np.arange(min(len(r), max_people)))
        entries.extend(to_coco_results(r, image_id))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(entries))
    os.replace(tmp, path)
    return path
