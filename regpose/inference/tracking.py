"""Simple pose tracking across video frames: identities kept by OKS matching with the Hungarian algorithm.

Each frame's people are matched one-to-one (scipy ``linear_sum_assignment`` on 1 - OKS) against the live tracks'
last poses; a match needs OKS >= ``oks_threshold``. Unmatched people start new tracks; a track unseen for more
than ``max_age`` frames is dropped. OKS uses the evaluator's vectorised :func:`regpose.evaluation.oks.coco_oks`
with the track's confident keypoints as the reference and its box area as the scale (the greedy / Hungarian OKS
trackers of PoseTrack baselines work the same way).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..evaluation.oks import coco_oks
from ..structures import PoseResult

__all__ = ["PoseTracker", "pose_areas"]


def pose_areas(result: PoseResult) -> np.ndarray:
    """(N,) area per person: its box area, or the extent of its keypoints when the box is empty."""
    b = np.asarray(result.boxes, dtype=np.float64).reshape(-1, 4)
    area = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    if len(result):
        xy = np.asarray(result.keypoints[..., :2], dtype=np.float64)
        ext = np.nan_to_num(xy.max(1) - xy.min(1), nan=0.0)
        area = np.where(area > 0, area, ext[:, 0] * ext[:, 1])
    return np.maximum(area, 1.0)


@dataclass
class _Tracks:
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    keypoints: np.ndarray | None = None        # (T, K, 3) x, y, v (v = 2 for confident keypoints, 0 otherwise)
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))   # x, y, w, h
    areas: np.ndarray = field(default_factory=lambda: np.zeros(0))
    age: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # frames since last matched


class PoseTracker:
    """Assigns ``extras["track_id"]`` (int64, >= 0) to every person of consecutive frames.

    sigmas:          (K,) OKS constants of the keypoint layout
    oks_threshold:   minimum OKS between a person and a track's last pose to continue that track
    max_age:         frames a track may go unmatched before it is dropped
    kpt_threshold:   keypoints below this confidence are not used for matching
    min_score:       people below this instance score are not tracked (track_id -1) and start no track
    """

    def __init__(self, sigmas, oks_threshold: float = 0.3, max_age: int = 10, kpt_threshold: float = 0.05,
                 min_score: float = 0.0):
        self.sigmas = np.asarray(sigmas, dtype=np.float64)
        self.oks_threshold = float(oks_threshold)
        self.max_age = int(max_age)
        self.kpt_threshold = float(kpt_threshold)
        self.min_score = float(min_score)
        self.reset()

    def reset(self) -> None:
        self._tracks = _Tracks()
        self._next_id = 0

    @property
    def num_tracks(self) -> int:
        return len(self._tracks.ids)

    def similarity(self, result: PoseResult) -> np.ndarray:
        """(N, T) OKS of the frame's people against the live tracks."""
        t = self._tracks
        if not len(result) or t.keypoints is None or not len(t.ids):
            return np.zeros((len(result), len(t.ids)))
        return coco_oks(result.keypoints[..., :2], t.keypoints, t.areas, self.sigmas, t.boxes)

    def update(self, result: PoseResult) -> PoseResult:
        """Match one frame's people to the tracks; returns ``result`` with ``extras["track_id"]`` set."""
        n = len(result)
        ids = np.full(n, -1, dtype=np.int64)
        tracked = np.nonzero(np.asarray(result.scores) >= self.min_score)[0]
        t = self._tracks
        matched_tracks = np.zeros(len(t.ids), dtype=bool)
        if len(tracked) and len(t.ids):
            oks = self.similarity(result.select(tracked))                 # (n', T)
            rows, cols = linear_sum_assignment(1.0 - oks)
            ok = oks[rows, cols] >= self.oks_threshold
            ids[tracked[rows[ok]]] = t.ids[cols[ok]]
            matched_tracks[cols[ok]] = True
        new = tracked[ids[tracked] < 0]
        ids[new] = np.arange(self._next_id, self._next_id + len(new))
        self._next_id += len(new)
        self._refresh(result, ids, matched_tracks)
        extras = dict(result.extras)
        extras["track_id"] = ids
        return PoseResult(result.boxes, result.keypoints, result.scores, extras)

    def _refresh(self, result: PoseResult, ids: np.ndarray, matched_tracks: np.ndarray) -> None:
        """Tracks seen in this frame take its poses; unseen ones age and expire after ``max_age`` frames."""
        t = self._tracks
        seen = ids >= 0
        kp = np.asarray(result.keypoints, dtype=np.float64)[seen]
        vis = np.where(kp[..., 2] >= self.kpt_threshold, 2.0, 0.0)
        kp = np.concatenate([kp[..., :2], vis[..., None]], axis=-1)
        b = np.asarray(result.boxes, dtype=np.float64)[seen]
        xywh = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)
        areas = pose_areas(result)[seen]
        keep_old = ~matched_tracks & (t.age + 1 <= self.max_age)
        k = len(self.sigmas)     # from the layout, not the frame: a frame without people may carry (0, 0, 3)
        old_kp = t.keypoints[keep_old] if t.keypoints is not None else np.zeros((0, k, 3))
        self._tracks = _Tracks(
            ids=np.concatenate([ids[seen], t.ids[keep_old]]),
            keypoints=np.concatenate([kp.reshape(-1, k, 3), old_kp.reshape(-1, k, 3)]),
            boxes=np.concatenate([xywh, t.boxes[keep_old]]),
            areas=np.concatenate([areas, t.areas[keep_old]]),
            age=np.concatenate([np.zeros(int(seen.sum()), np.int64), t.age[keep_old] + 1]))
