"""OKS tracking: identities follow people across frames (Hungarian matching, not greedy), new people get new ids,
tracks expire after max_age frames, low-scoring people are not tracked."""
from __future__ import annotations

import numpy as np

from regpose.data.keypoints import COCO_SIGMAS
from regpose.inference.tracking import PoseTracker
from regpose.structures import PoseResult


def _person(cx, cy, size=100.0, seed=0):
    rng = np.random.default_rng(seed)
    xy = np.array([cx, cy]) + rng.uniform(-0.5, 0.5, (17, 2)) * size
    return np.concatenate([xy, np.ones((17, 1))], 1)


def _frame(people, scores=None):
    kp = np.stack(people) if people else np.zeros((0, 17, 3))
    boxes = np.concatenate([kp[..., :2].min(1), kp[..., :2].max(1)], 1) if people else np.zeros((0, 4))
    return PoseResult(boxes, kp, np.ones(len(people)) if scores is None else scores)


def test_ids_follow_moving_people_in_any_order():
    t = PoseTracker(COCO_SIGMAS, oks_threshold=0.3)
    a, b = _person(100, 100, seed=1), _person(400, 120, seed=2)
    ids0 = t.update(_frame([a, b])).extras["track_id"]
    assert ids0.tolist() == [0, 1]
    shift = np.array([6.0, 3.0, 0.0])
    ids1 = t.update(_frame([b + shift, a + shift])).extras["track_id"]     # order swapped, both moved
    assert ids1.tolist() == [1, 0]
    c = _person(700, 300, seed=3)                                          # a newcomer
    ids2 = t.update(_frame([a + 2 * shift, c, b + 2 * shift])).extras["track_id"]
    assert ids2.tolist() == [0, 2, 1]


def test_hungarian_beats_greedy():
    """Tracks A (x = 0) and B (x = 12); people p0 (x = 7) and p1 (x = 20). Greedy matching takes the best pair
    first, (p0, B), and leaves p1 with A below the threshold, so B's person would get a new id; the one-to-one
    optimum (p0, A), (p1, B) keeps both identities."""
    t = PoseTracker(COCO_SIGMAS, oks_threshold=0.3)
    base = _person(200, 200, size=80, seed=4)
    dx = lambda x: base + np.array([x, 0.0, 0.0])  # noqa: E731
    t.update(_frame([dx(0), dx(12)]))
    frame = _frame([dx(7), dx(20)])
    oks = t.similarity(frame)
    assert oks.max() == oks[0, 1] and oks[1, 0] < 0.3 <= min(oks[0, 0], oks[1, 1])   # the greedy trap
    assert t.update(frame).extras["track_id"].tolist() == [0, 1]


def test_tracks_expire_and_low_scores_are_not_tracked():
    t = PoseTracker(COCO_SIGMAS, max_age=2, min_score=0.5)
    a = _person(100, 100, seed=5)
    assert t.update(_frame([a])).extras["track_id"].tolist() == [0]
    t.update(_frame([]))
    t.update(_frame([]))
    assert t.update(_frame([a])).extras["track_id"].tolist() == [0]       # back within max_age frames
    for _ in range(3):
        t.update(_frame([]))
    assert t.num_tracks == 0
    ids = t.update(_frame([a, _person(500, 500, seed=6)], scores=np.array([0.9, 0.1]))).extras["track_id"]
    assert ids.tolist() == [1, -1]                                         # expired id not reused; 0.1 untracked


def test_frames_without_people_before_any_track():
    """A video that starts with empty frames (issue 18: main crashed reshaping the empty track set), including
    the (0, 0, 3) keypoints of a result built without a keypoint count; ids then start at 0 and continue."""
    t = PoseTracker(COCO_SIGMAS)
    assert t.update(_frame([])).extras["track_id"].tolist() == []
    assert t.update(PoseResult(np.zeros((0, 4)), np.zeros((0, 3)), np.zeros(0))).extras["track_id"].tolist() == []
    a = _person(100, 100, seed=7)
    assert t.update(_frame([a])).extras["track_id"].tolist() == [0]
    assert t.update(PoseResult(np.zeros((0, 4)), np.zeros((0, 3)), np.zeros(0))).extras["track_id"].tolist() == []
    assert t.update(_frame([a, _person(600, 300, seed=8)])).extras["track_id"].tolist() == [0, 1]
