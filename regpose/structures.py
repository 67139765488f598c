"""Typed results shared by models, inference, export and evaluation."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["PoseResult", "to_coco_results"]


@dataclass
class PoseResult:
    """People found in one image, in original-image pixel coordinates.

    boxes:     (N, 4) float32 x1, y1, x2, y2
    keypoints: (N, K, 3) float32 x, y, per-keypoint confidence
    scores:    (N,) float32 instance scores
    extras:    optional per-person arrays a method wants to carry (e.g. track ids, sigmas)
    """
    boxes: np.ndarray
    keypoints: np.ndarray
    scores: np.ndarray
    extras: dict = field(default_factory=dict)

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.keypoints = np.asarray(self.keypoints, dtype=np.float32)
        if self.keypoints.ndim == 2 and self.keypoints.shape[0] == 0:
            self.keypoints = self.keypoints.reshape(0, 0, 3)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        n = len(self.scores)
        if self.keypoints.ndim != 3 or self.keypoints.shape[-1] != 3 or len(self.keypoints) != n or len(self.boxes) != n:
            raise ValueError(f"PoseResult: inconsistent shapes boxes {self.boxes.shape}, keypoints "
                             f"{self.keypoints.shape}, scores {self.scores.shape}")

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls, num_keypoints: int) -> "PoseResult":
        return cls(np.zeros((0, 4)), np.zeros((0, num_keypoints, 3)), np.zeros((0,)))

    @classmethod
    def concat(cls, results: list["PoseResult"], num_keypoints: int) -> "PoseResult":
        results = [r for r in results if len(r)]
        if not results:
            return cls.empty(num_keypoints)
        keys = set.intersection(*(set(r.extras) for r in results)) if results else set()
        return cls(np.concatenate([r.boxes for r in results]),
                   np.concatenate([r.keypoints for r in results]),
                   np.concatenate([r.scores for r in results]),
                   {k: np.concatenate([np.asarray(r.extras[k]) for r in results]) for k in keys})

    def select(self, index) -> "PoseResult":
        return PoseResult(self.boxes[index], self.keypoints[index], self.scores[index],
                          {k: np.asarray(v)[index] for k, v in self.extras.items()})

    def sorted(self) -> "PoseResult":
        return self.select(np.argsort(-self.scores, kind="stable"))


def to_coco_results(result: PoseResult, image_id: int, category_id: int = 1) -> list[dict]:
    """COCO keypoint results entries: ``{image_id, category_id, keypoints: [x, y, s]*K, score, bbox}``."""
    out = []
    boxes = result.boxes
    for i in range(len(result)):
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        out.append({
            "image_id": int(image_id),
            "category_id": int(category_id),
            "keypoints": [round(float(v), 4) for v in result.keypoints[i].reshape(-1)],
            "score": float(result.scores[i]),
            "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
        })
    return out
