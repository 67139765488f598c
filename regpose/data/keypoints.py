"""Keypoint layouts of the supported datasets: names, left/right flip map, skeleton, OKS sigmas, body halves and
the part groupings QueryPose uses (its paper, Fig. 4 a–d).

Everything downstream (flip augmentation, flip test, OKS evaluation, OKS-NMS, rendering, QueryPose's part
queries) reads these tables through :func:`get_meta`; nothing else hard-codes a keypoint order.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["KeypointMeta", "get_meta", "keypoint_info", "flip_index", "FORMATS",
           "COCO_SIGMAS", "CROWDPOSE_SIGMAS", "MPII_SIGMAS"]


@dataclass(frozen=True)
class KeypointMeta:
    """One dataset's keypoint layout.

    name:            dataset format ("coco", "crowdpose", "mpii", "ochuman")
    keypoint_names:  K names in annotation order
    flip_index:      (K,) int array; after a horizontal flip keypoint i takes the values of ``flip_index[i]``
    skeleton:        limbs as 0-based (a, b) index pairs, for drawing
    sigmas:          (K,) OKS per-keypoint constants (COCO's official 17; CrowdPose's 14)
    upper_body_ids / lower_body_ids: the two halves used by top-down half-body augmentation
    part_schemes:    QueryPose Fig. 4: "a" one part per keypoint, "b" head keypoints as one part, "c" rigid parts
                     (the official default), "d" head + four limbs; each a list of keypoint-index groups
    """
    name: str
    keypoint_names: tuple[str, ...]
    flip_index: np.ndarray
    skeleton: tuple[tuple[int, int], ...]
    sigmas: np.ndarray
    upper_body_ids: tuple[int, ...]
    lower_body_ids: tuple[int, ...]
    part_schemes: dict = field(default_factory=dict)

    @property
    def num_keypoints(self) -> int:
        return len(self.keypoint_names)

    @property
    def flip_pairs(self) -> list[tuple[int, int]]:
        """Left/right pairs (i, j) with i < j."""
        return [(i, int(j)) for i, j in enumerate(self.flip_index) if i < j]

    @property
    def left_ids(self) -> list[int]:
        return [i for i, n in enumerate(self.keypoint_names) if n.startswith(("left", "l_"))]

    @property
    def right_ids(self) -> list[int]:
        return [i for i, n in enumerate(self.keypoint_names) if n.startswith(("right", "r_"))]

    def index(self, name: str) -> int:
        return self.keypoint_names.index(name)

    def parts(self, scheme: str = "c") -> list[list[int]]:
        """QueryPose part division ``scheme`` (paper Fig. 4): list of keypoint-index groups."""
        if scheme not in self.part_schemes:
            raise KeyError(f"{self.name}: unknown part scheme {scheme!r} (one of {sorted(self.part_schemes)})")
        return [list(g) for g in self.part_schemes[scheme]]


# ----------------------------------------------------------------------------------------------------------
# COCO-17 (also OCHuman)
# ----------------------------------------------------------------------------------------------------------
COCO_NAMES = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
              "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
              "right_knee", "left_ankle", "right_ankle")
# pycocotools' official constants.
COCO_SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89]) / 10.0
# The COCO annotation file's skeleton (1-based there), 0-based here.
COCO_SKELETON = ((15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
                 (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6))
COCO_PARTS = {
    "a": [[i] for i in range(17)],
    "b": [[0, 1, 2, 3, 4]] + [[i] for i in range(5, 17)],
    # Official QueryPose 7-part scheme (spec §4.8): face, shoulders, L/R elbow-wrist, hips, L/R knee-ankle.
    "c": [[0, 1, 2, 3, 4], [5, 6], [7, 9], [8, 10], [11, 12], [13, 15], [14, 16]],
    "d": [[0, 1, 2, 3, 4], [5, 7, 9], [6, 8, 10], [11, 13, 15], [12, 14, 16]],
}

# ----------------------------------------------------------------------------------------------------------
# CrowdPose-14
# ----------------------------------------------------------------------------------------------------------
CROWDPOSE_NAMES = ("left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
                   "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle", "head", "neck")
# crowdposetools / xtcocotools (mmpose's CrowdPose dataset info).
CROWDPOSE_SIGMAS = np.array([.79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89, .79, .79]) / 10.0
CROWDPOSE_SKELETON = ((12, 13), (13, 0), (13, 1), (0, 2), (2, 4), (1, 3), (3, 5), (0, 6), (1, 7), (6, 7),
                      (6, 8), (8, 10), (7, 9), (9, 11))
CROWDPOSE_PARTS = {  # Fig. 4 applied to the CrowdPose layout (the head is "head" + "neck")
    "a": [[i] for i in range(14)],
    "b": [[12, 13]] + [[i] for i in range(12)],
    "c": [[12, 13], [0, 1], [2, 4], [3, 5], [6, 7], [8, 10], [9, 11]],
    "d": [[12, 13], [0, 2, 4], [1, 3, 5], [6, 8, 10], [7, 9, 11]],
}

# ----------------------------------------------------------------------------------------------------------
# MPII-16
# ----------------------------------------------------------------------------------------------------------
MPII_NAMES = ("r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "pelvis", "thorax", "upper_neck",
              "head_top", "r_wrist", "r_elbow", "r_shoulder", "l_shoulder", "l_elbow", "l_wrist")
# MPII is scored by PCKh; these OKS constants (mmpose's MPII dataset info) only serve OKS-NMS / tracking.
MPII_SIGMAS = np.array([0.089, 0.083, 0.107, 0.107, 0.083, 0.089, 0.026, 0.026, 0.026, 0.026, 0.062, 0.072,
                        0.179, 0.179, 0.072, 0.062])
MPII_SKELETON = ((0, 1), (1, 2), (2, 6), (6, 3), (3, 4), (4, 5), (6, 7), (7, 8), (8, 9), (7, 12), (12, 11),
                 (11, 10), (7, 13), (13, 14), (14, 15))
MPII_PARTS = {
    "a": [[i] for i in range(16)],
    "b": [[8, 9]] + [[i] for i in range(8)] + [[i] for i in range(10, 16)],
    "c": [[8, 9], [7, 12, 13], [11, 10], [14, 15], [2, 3, 6], [1, 0], [4, 5]],
    "d": [[7, 8, 9], [13, 14, 15], [12, 11, 10], [6, 3, 4, 5], [2, 1, 0]],
}


def _flip_index_from_names(names: tuple[str, ...]) -> np.ndarray:
    """Mirror map from the names: left_x <-> right_x, l_x <-> r_x, others map to themselves."""
    index = {n: i for i, n in enumerate(names)}
    out = []
    for n in names:
        for a, b in (("left_", "right_"), ("right_", "left_"), ("l_", "r_"), ("r_", "l_")):
            if n.startswith(a):
                out.append(index[b + n[len(a):]])
                break
        else:
            out.append(index[n])
    return np.array(out, dtype=np.int64)


def _make(name, names, skeleton, sigmas, upper, parts) -> KeypointMeta:
    upper = tuple(upper)
    lower = tuple(i for i in range(len(names)) if i not in upper)
    sig = np.asarray(sigmas, dtype=np.float64)
    fi = _flip_index_from_names(names)
    sig.setflags(write=False)
    fi.setflags(write=False)
    return KeypointMeta(name=name, keypoint_names=tuple(names), flip_index=fi, skeleton=tuple(skeleton),
                        sigmas=sig, upper_body_ids=upper, lower_body_ids=lower, part_schemes=parts)


_META = {
    "coco": _make("coco", COCO_NAMES, COCO_SKELETON, COCO_SIGMAS, range(11), COCO_PARTS),
    "ochuman": _make("ochuman", COCO_NAMES, COCO_SKELETON, COCO_SIGMAS, range(11), COCO_PARTS),
    "crowdpose": _make("crowdpose", CROWDPOSE_NAMES, CROWDPOSE_SKELETON, CROWDPOSE_SIGMAS,
                       (0, 1, 2, 3, 4, 5, 12, 13), CROWDPOSE_PARTS),
    "mpii": _make("mpii", MPII_NAMES, MPII_SKELETON, MPII_SIGMAS, (7, 8, 9, 10, 11, 12, 13, 14, 15), MPII_PARTS),
}
FORMATS = tuple(_META)


def get_meta(fmt: str) -> KeypointMeta:
    """Keypoint layout of dataset format ``fmt`` ("coco", "crowdpose", "mpii", "ochuman")."""
    try:
        return _META[fmt]
    except KeyError:
        from ..errors import DataError
        raise DataError(f"unknown keypoint format {fmt!r} (expected one of: {', '.join(FORMATS)})") from None


# Aliases some callers use.
keypoint_info = get_meta


def flip_index(fmt: str) -> np.ndarray:
    return get_meta(fmt).flip_index
