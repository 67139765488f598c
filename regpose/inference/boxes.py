"""Where a top-down method's person boxes come from: one family of box sources, each a callable
``(image_id, RGB image) -> (n, 5) x, y, w, h, score``. Boxes are resolved before crops are made (and before a
dataset is built: :func:`boxes_of_records`); the data layer never runs a model.

* :class:`GroundTruthBoxes`  the annotated people, cleaned as mmpose does (Poseur spec 1.6), score 1
* :class:`DetectionBoxes`    a detections json (COCO results, or a dict with ``images``), as mmpose's ``det_bbox_thr``
* :class:`DetectorBoxes`     the people a whole-image regpose model (one-stage or bottom-up) finds
                             (built from a config by :func:`regpose.inference.predictor.build_box_source`)

Image ids: results are labelled by :func:`unique_image_ids`; a detections json files its boxes under its own ids
(:meth:`DetectionBoxes.image_id_for`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ..data.datasets import ImageRecord, clean_gt_boxes, read_detections, read_image
from ..errors import InputError
from ..structures import PoseResult

__all__ = ["BoxSource", "GroundTruthBoxes", "DetectionBoxes", "DetectorBoxes", "people_boxes", "boxes_of_records",
           "image_id_from_name", "unique_image_ids"]

BoxSource = Callable[[int, np.ndarray], np.ndarray]


class GroundTruthBoxes:
    """Annotated boxes, cleaned as mmpose does (Poseur spec 1.6; :func:`regpose.data.datasets.clean_gt_boxes`),
    score 1."""

    def __init__(self, records: Iterable[ImageRecord]):
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


class DetectorBoxes:
    """Person boxes from a whole-image regpose model: ``people(image, image_id) -> PoseResult`` (a detector's
    :class:`~regpose.inference.predictor.Predictor`), each person's box and instance score (:func:`people_boxes`)."""

    def __init__(self, people: Callable[[np.ndarray, int], PoseResult], score_threshold: float = 0.0):
        self.people = people
        self.score_threshold = float(score_threshold)

    def __call__(self, image_id: int, image: np.ndarray) -> np.ndarray:
        return people_boxes(self.people(image, int(image_id)), self.score_threshold)


def boxes_of_records(source: BoxSource, records: Iterable[ImageRecord]) -> dict[int, np.ndarray]:
    """``{image_id: (n, 5)}`` person boxes of every annotated image (each image read once), for a top-down dataset
    built from them (:func:`regpose.data.datasets.build_dataset`, ``person_boxes``)."""
    return {int(r.image_id): np.asarray(source(int(r.image_id), read_image(r.file_name)), np.float64).reshape(-1, 5)
            for r in records}


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
