"""The one inference pipeline of every method, shared by the evaluator (``regpose test``), :class:`Predictor` and
``regpose infer``:

  test samples (top-down methods: one crop per person box, the boxes resolved beforehand by a box source of
  :mod:`regpose.inference.boxes`; whole-image methods: the picture) -> the method's test transform
    -> batches -> ``model.predict`` (people in image pixels, flip / multi-scale as ``cfg.test`` says)
    -> the people of each image together -> ``model.finalize`` (top-down: rescoring + OKS-NMS,
       :func:`regpose.ops.topdown_finalize`) -> :func:`select_people` (score threshold, at most ``max_people``)

The evaluator feeds the same :meth:`PoseRunner.predict_batch` and :meth:`PoseRunner.finalize` from its
(sharded) DataLoader of a split; the predictor feeds :meth:`PoseRunner.__call__` pictures in memory.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from ..data.collate import collate
from ..data.datasets import person_sample, unannotated_sample
from ..errors import InputError
from ..models.registry import get_method
from ..structures import PoseResult, to_coco_results

__all__ = ["PoseRunner", "image_sample", "select_people", "write_results"]


def image_sample(transform, image: np.ndarray, image_id: int, file_name: str, num_keypoints: int) -> dict:
    """A whole-image method's test sample of a picture without annotations. A transform that cannot handle zero
    people (target encoding of an empty set) gets one unlabelled whole-image placeholder person instead: it only
    reaches the unused target, never the image or the meta."""
    try:
        return transform(unannotated_sample(image, image_id, file_name, num_keypoints))
    except (ValueError, IndexError):
        h, w = image.shape[:2]
        raw = unannotated_sample(image, image_id, file_name, num_keypoints)
        raw.update(keypoints=np.zeros((1, num_keypoints, 3), np.float32), boxes=np.array([[0, 0, w, h]], np.float32),
                   areas=np.array([w * h], np.float32), iscrowd=np.zeros(1, bool), num_keypoints=np.zeros(1, np.int64),
                   ann_ids=np.zeros(1, np.int64))
        return transform(raw)


def select_people(result: PoseResult, score_threshold: float, max_people: int) -> PoseResult:
    """Best first; people below ``score_threshold`` dropped; at most ``max_people`` (``cfg.test``)."""
    if not len(result):
        return result
    r = result.sorted()
    return r.select(np.nonzero(r.scores >= score_threshold)[0][:max_people])


class PoseRunner:
    """A model in eval mode with its test transform: pictures (+ person boxes for top-down methods) -> finalized
    people per picture. ``device`` is where batches go (CPU for an ONNX Runtime network)."""

    def __init__(self, model, cfg, batch_size: int | None = None, device: str | torch.device | None = None):
        spec = get_method(cfg.method)
        self.model, self.test_cfg, self.family = model, cfg.test, spec.family
        self.transform = spec.transform(cfg, False)
        self.batch_size = int(batch_size or max(1, cfg.test.batch_size))
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.num_keypoints = model.num_keypoints
        self.size_divisibility = int(getattr(model, "size_divisibility", 1))

    # ---- samples ---------------------------------------------------------------------------------------
    def samples(self, image: np.ndarray, image_id: int = 0, file_name: str = "",
                boxes: np.ndarray | None = None) -> list[dict]:
        """The test samples of one RGB picture: top-down methods one crop per person box ((n, 5) x, y, w, h,
        score), other methods the whole picture."""
        if self.family != "topdown":
            return [image_sample(self.transform, image, image_id, file_name, self.num_keypoints)]
        if boxes is None:
            raise InputError("a top-down method needs the person boxes of every picture (a box source of "
                             "regpose.inference.boxes gives them)")
        out = []
        for j, box in enumerate(np.asarray(boxes, dtype=np.float64).reshape(-1, 5)):
            raw = unannotated_sample(image, image_id, file_name, self.num_keypoints)
            raw["sample_index"] = j
            out.append(self.transform(person_sample(raw, box[:4], box[4])))
        return out

    # ---- predict, group, finalize ------------------------------------------------------------------------
    @torch.no_grad()
    def predict_batch(self, batch: dict) -> list[tuple[dict, PoseResult]]:
        """(meta, people) of every sample of a collated batch. The metas are copied before ``predict`` (which may
        consume entries such as DEKR's ``image_raw``)."""
        metas = [dict(m) for m in batch["metas"]]
        batch["images"] = batch["images"].to(self.device, non_blocking=True)
        return list(zip(metas, self.model.predict(batch, self.test_cfg)))

    def predict(self, samples: Sequence[dict]) -> Iterator[tuple[dict, PoseResult]]:
        """(meta, people) of every test sample, ``batch_size`` samples per network call."""
        for start in range(0, len(samples), self.batch_size):
            yield from self.predict_batch(collate(list(samples[start:start + self.batch_size]),
                                                  self.size_divisibility))

    def finalize(self, parts: Iterable[PoseResult], meta: dict | None) -> PoseResult:
        """The people of one image's samples together, through the method's per-image ``finalize`` (``meta``:
        the image's first sample's), then :func:`select_people`."""
        parts = list(parts)
        result = self.model.finalize(PoseResult.concat(parts, self.num_keypoints), meta) if parts else None
        if result is None or (not len(result) and result.keypoints.shape[1] != self.num_keypoints):
            return PoseResult.empty(self.num_keypoints)
        return select_people(result, self.test_cfg.score_threshold, self.test_cfg.max_people)

    def __call__(self, images: Sequence[np.ndarray], image_ids: Sequence[int] | None = None,
                 file_names: Sequence[str] | None = None, boxes: Sequence[np.ndarray | None] | None = None
                 ) -> list[PoseResult]:
        """People in each RGB uint8 picture (original pixels); ``boxes[i]`` the (n, 5) person boxes of picture i
        (top-down methods). Crops of several pictures share network calls."""
        self.model.eval()
        n = len(images)
        ids = list(image_ids) if image_ids is not None else list(range(n))
        names = list(file_names) if file_names is not None else [""] * n
        samples, owner = [], []
        for i in range(n):
            s = self.samples(images[i], ids[i], names[i], None if boxes is None else boxes[i])
            samples += s
            owner += [i] * len(s)
        parts: list[list[PoseResult]] = [[] for _ in range(n)]
        first_meta: list[dict | None] = [None] * n
        for o, (meta, result) in zip(owner, self.predict(samples)):
            parts[o].append(result)
            first_meta[o] = first_meta[o] or meta
        return [self.finalize(p, m) for p, m in zip(parts, first_meta)]


def write_results(results: dict[int, PoseResult], path: str | os.PathLike, score_threshold: float = 0.0,
                  max_people: int = 100) -> Path:
    """COCO keypoint results json of ``{image_id: PoseResult}`` (people selected by :func:`select_people`),
    written atomically: a reader never sees half a file."""
    entries = []
    for image_id in sorted(results):
        entries.extend(to_coco_results(select_people(results[image_id], score_threshold, max_people), image_id))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(entries))
    os.replace(tmp, path)
    return path
