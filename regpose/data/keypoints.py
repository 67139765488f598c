"""Keypoint layouts: names, left/right flip map, skeleton, OKS sigmas, body halves and the part groupings QueryPose
uses (its paper, Fig. 4 a–d).

The built-in layouts of the supported datasets (:func:`get_meta`) and layouts of one's own, declared in the config's
``data.keypoints`` section or taken from a COCO annotation file's ``categories`` entry (:func:`make_layout`,
:func:`keypoint_layout`). A run's layout is ``keypoint_layout(cfg.data)``: every builder receives it, and everything
downstream (flip augmentation, flip test, OKS evaluation, OKS-NMS, rendering, QueryPose's part queries) reads it;
nothing else hard-codes a keypoint order or count.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import ConfigError, DataError
from ..jsonio import read_json

__all__ = ["KeypointMeta", "get_meta", "make_layout", "keypoint_layout", "layout_section", "flip_index", "FORMATS",
           "COCO_SIGMAS", "CROWDPOSE_SIGMAS", "MPII_SIGMAS"]


@dataclass(frozen=True)
class KeypointMeta:
    """One dataset's keypoint layout.

    name:            dataset format ("coco", "crowdpose", "mpii", "ochuman"), or "custom" for a declared layout
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


def _make(name, names, skeleton, sigmas, upper, parts, flip=None) -> KeypointMeta:
    upper = tuple(upper)
    lower = tuple(i for i in range(len(names)) if i not in upper)
    sig = np.asarray(sigmas, dtype=np.float64)
    fi = _flip_index_from_names(names) if flip is None else np.asarray(flip, dtype=np.int64)
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
        raise DataError(f"unknown keypoint format {fmt!r} (expected one of: {', '.join(FORMATS)})") from None


def flip_index(fmt: str) -> np.ndarray:
    return get_meta(fmt).flip_index


# ----------------------------------------------------------------------------------------------------------
# Layouts of one's own
# ----------------------------------------------------------------------------------------------------------
def make_layout(names: Sequence[str], sigmas: Sequence[float] | float, *, flip_pairs: Sequence = (),
                skeleton: Sequence = (), upper_body: Sequence[str] = (), parts: Sequence[Sequence[str]] = (),
                where: str = "data.keypoints") -> KeypointMeta:
    """A keypoint layout declared by name (e.g. a 5-keypoint animal set), named "custom".

    names:       the K keypoint names in annotation order
    sigmas:      K OKS constants, or one number used for every keypoint (the evaluator, OKS-NMS and tracking use them)
    flip_pairs:  left/right partners as name pairs; empty: from the names (left_x <-> right_x, l_x <-> r_x)
    skeleton:    limbs as name pairs (drawing only)
    upper_body:  the upper half for top-down half-body augmentation (the rest is the lower half)
    parts:       QueryPose part queries as groups of names (its scheme "c"); scheme "a" (one part per keypoint)
                 always exists
    Errors name ``where`` (the config section or file the layout came from)."""
    names = tuple(str(n) for n in names)
    k = len(names)
    if k == 0 or len(set(names)) != k:
        raise ConfigError(f"{where}.names: expected distinct keypoint names, got {list(names)}")
    index = {n: i for i, n in enumerate(names)}

    def ids(group, key) -> list[int]:
        missing = [n for n in group if n not in index]
        if missing:
            raise ConfigError(f"{where}.{key}: {missing[0]!r} is not one of the keypoint names {list(names)}")
        return [index[n] for n in group]

    sig = np.full(k, float(sigmas)) if np.ndim(sigmas) == 0 else np.asarray(sigmas, dtype=np.float64)
    if sig.shape != (k,) or not np.all(np.isfinite(sig) & (sig > 0)):
        raise ConfigError(f"{where}.sigmas: expected {k} positive OKS sigmas (one per keypoint) or one for all, "
                          f"got {np.asarray(sigmas).tolist()}")
    if flip_pairs:
        flip = np.arange(k)
        for pair in flip_pairs:
            if len(pair) != 2:
                raise ConfigError(f"{where}.flip_pairs: expected pairs of names, got {list(pair)}")
            a, b = ids(pair, "flip_pairs")
            if flip[a] != a or flip[b] != b or a == b:
                raise ConfigError(f"{where}.flip_pairs: {names[a]!r} / {names[b]!r} paired twice or with itself")
            flip[a], flip[b] = b, a
    else:
        try:
            flip = _flip_index_from_names(names)
        except KeyError as e:
            raise ConfigError(f"{where}.names: {e.args[0]!r} is the mirror of a name in the list but missing; "
                              f"give data.keypoints.flip_pairs") from None
    limbs = []
    for limb in skeleton:
        if len(limb) != 2:
            raise ConfigError(f"{where}.skeleton: expected limbs as pairs of names, got {list(limb)}")
        limbs.append(tuple(ids(limb, "skeleton")))
    groups = [ids(g, "parts") for g in parts]
    if groups and sorted(i for g in groups for i in g) != list(range(k)):
        raise ConfigError(f"{where}.parts: expected every keypoint in exactly one part, got {[list(g) for g in parts]}")
    schemes = {"a": [[i] for i in range(k)], **({"c": groups} if groups else {})}
    return _make("custom", names, limbs, sig, ids(upper_body, "upper_body"), schemes, flip)


def _annotation_categories(data_cfg) -> tuple[Path, dict]:
    """The first annotation file of the training split (else the validation split) and its keypoint category."""
    files = list(data_cfg.train.ann_files) or list(data_cfg.val.ann_files)
    if not files:
        raise ConfigError("data.keypoints.from_annotations: needs data.train.ann_files (or data.val.ann_files) to "
                          "read the keypoint names from; synthetic splits declare data.keypoints.names instead")
    path = Path(files[0]).expanduser().resolve()
    stat = path.stat() if path.is_file() else None
    key = (str(path), stat.st_mtime_ns if stat else 0, stat.st_size if stat else 0)
    if key not in _CATEGORIES:
        data = read_json(path, "annotation")
        cats = [c for c in (data.get("categories") or [] if isinstance(data, dict) else [])
                if isinstance(c, dict) and c.get("keypoints")]
        if not cats:
            raise DataError(f"{path}: data.keypoints.from_annotations needs a 'categories' entry with 'keypoints' "
                            f"(names) and optionally 'skeleton' (1-based index pairs)")
        _CATEGORIES[key] = cats[0]
    return path, _CATEGORIES[key]


_CATEGORIES: dict[tuple, dict] = {}   # (path, mtime, size) -> category: a large train file is read once


def keypoint_layout(data_cfg) -> KeypointMeta:
    """The keypoint layout of a config's ``data`` section: ``data.keypoints.names`` when declared, the category of
    the first annotation file with ``data.keypoints.from_annotations``, else the built-in layout of ``data.format``."""
    kp = data_cfg.keypoints
    declared = bool(kp.names) or kp.from_annotations
    if not declared:
        for key in ("flip_pairs", "skeleton", "sigmas", "upper_body", "parts"):
            if getattr(kp, key):
                raise ConfigError(f"data.keypoints.{key}: only used with a declared layout (data.keypoints.names or "
                                  f"data.keypoints.from_annotations: true); data.format {data_cfg.format!r} has "
                                  f"its own")
        return get_meta(data_cfg.format)
    if data_cfg.format == "mpii":
        raise ConfigError("data.keypoints: a declared keypoint layout needs COCO-style annotation files and OKS "
                          "evaluation (data.format coco, ochuman or crowdpose), not mpii (PCKh of MPII's 16 joints)")
    if not kp.sigmas:
        raise ConfigError("data.keypoints.sigmas: a declared layout needs its OKS sigmas (one per keypoint, or one "
                          "number for all; COCO's range from 0.025 (eyes) to 0.107 (hips))")
    sigmas = kp.sigmas[0] if len(kp.sigmas) == 1 else kp.sigmas
    if kp.names and kp.from_annotations:
        raise ConfigError("data.keypoints: give either names or from_annotations: true, not both")
    if kp.names:
        return make_layout(kp.names, sigmas, flip_pairs=kp.flip_pairs, skeleton=kp.skeleton,
                           upper_body=kp.upper_body, parts=kp.parts)
    path, cat = _annotation_categories(data_cfg)
    names = [str(n) for n in cat["keypoints"]]
    try:
        skeleton = kp.skeleton or [(names[int(a) - 1], names[int(b) - 1]) for a, b in cat.get("skeleton") or []]
    except (IndexError, TypeError, ValueError):
        raise DataError(f"{path}: categories 'skeleton' must hold 1-based index pairs of its "
                        f"{len(names)} keypoints") from None
    return make_layout(names, sigmas, flip_pairs=kp.flip_pairs, skeleton=skeleton, upper_body=kp.upper_body,
                       parts=kp.parts, where=f"data.keypoints ({os.path.basename(path)})")


def layout_section(meta: KeypointMeta) -> dict:
    """A layout as a ``data.keypoints`` mapping that declares it (names, flip pairs, skeleton, sigmas, upper body,
    QueryPose parts): a resolved layout written back into a saved config needs no annotation file."""
    names = meta.keypoint_names
    return {"names": list(names), "flip_pairs": [[names[a], names[b]] for a, b in meta.flip_pairs],
            "skeleton": [[names[a], names[b]] for a, b in meta.skeleton], "sigmas": meta.sigmas.tolist(),
            "upper_body": [names[i] for i in meta.upper_body_ids], "from_annotations": False,
            "parts": [[names[i] for i in g] for g in meta.part_schemes.get("c", [])]}
