"""Keypoint-aware augmentation on raw samples (see :mod:`regpose.data.datasets`).

Every geometric transform updates ``sample["affine"]``, a 3x3 matrix from *original* image pixels to the pixels
of the current image, so predictions map back with one matrix: :func:`make_meta` stores its inverse as
``meta["inverse"]`` (2x3, network input -> original). Keypoints are pixel indices (pixel centres at integers);
boxes are continuous COCO coordinates (pixel i covers [i, i+1)), i.e. a box corner c is the point c - 0.5 in
pixel-index coordinates. Horizontal flips map x -> W - 1 - x and swap left/right keypoints through the dataset's
``flip_index``.

Three families, each reproducing its official code:
  * bottom-up (DEKR, reference/dekr/spec.md §2.2): :class:`BottomUpRandomAffine` + :class:`HorizontalFlip`
    (the test resize is DEKR's codec's, :mod:`regpose.codecs.heatmap_offset`);
  * one-stage (QueryPose / Sparse R-CNN mapper, reference/querypose/spec.md §8, detectron2 semantics):
    :class:`OneStageAugmentation`, test :class:`ResizeShortestEdge` (800, 1333);
  * top-down (Poseur / mmpose, reference/poseur/spec.md §1.1–1.7): :class:`TopDownGetBboxCenterScale`,
    :class:`TopDownRandomFlip`, :class:`TopDownHalfBody`, :class:`TopDownRandomScaleRotation`,
    :class:`TopDownAffine` (mmpose's default or UDP);
plus colour: :class:`ColorJitter`, :class:`PhotometricDistortion` (mmcv, with its quirks as an option),
:class:`Cutout`. The ``*_transforms(data_cfg, ...)`` builders assemble each family from ``cfg.data.augment``.

Randomness: every transform takes ``rng`` (a ``numpy.random.Generator``); :class:`Compose` draws one per sample
from Python's ``random`` module when none is given, which the trainer seeds per sample (engine.samplers), so a
sample is the same for any number of workers or processes. Official code: DEKR draws scale, rotation and shift from
numpy's global RNG and the flip from Python's ``random`` (reference/dekr/train_step README Q1); we draw all of them,
in the same order and with the same distributions, from the one per-sample generator. The official streams cannot
be replayed from a seed anyway (its loader workers reseed both), so exact replay goes through parameters:
the random bottom-up transforms record what they drew in ``sample["augment"]`` (and so ``meta["augment"]``), and
a sample that arrives with ``augment`` entries is transformed with those instead of drawing them
(:meth:`BottomUpRandomAffine.draw`, :meth:`HorizontalFlip.draw` are the draws).
"""
from __future__ import annotations

import math
import random
import sys
from typing import Callable, Sequence

import cv2
import numpy as np
import torch

from .datasets import ignore_mask
from .keypoints import keypoint_layout
__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "to_tensor_normalize",
    "Compose", "apply_affine", "transform_boxes", "inverse_affine", "make_meta", "select_people", "flip_matrix",
    "HorizontalFlip", "ResizeShortestEdge", "RandomCrop", "OneStageAugmentation", "OneStageAnnotations",
    "BottomUpRandomAffine", "dekr_affine_matrix", "warp_sample",
    "box_to_center_scale", "get_affine_transform", "get_warp_matrix", "transform_preds",
    "TopDownGetBboxCenterScale", "TopDownRandomFlip", "TopDownHalfBody", "TopDownRandomScaleRotation",
    "TopDownAffine", "ColorJitter", "PhotometricDistortion", "Cutout",
    "bottomup_train_transforms", "onestage_train_transforms", "onestage_test_transforms",
    "topdown_train_transforms", "topdown_test_transforms", "color_transforms",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PERSON_KEYS = ("keypoints", "boxes", "areas", "iscrowd", "num_keypoints", "ann_ids")


# ==========================================================================================================
# Tensors
# ==========================================================================================================
def to_tensor_normalize(image: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN,
                        std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """uint8 (H, W, 3) RGB -> float32 (3, H, W): ``(x / 255 - mean) / std`` (torchvision / mmpose order of
    operations, so official inputs are reproduced bit for bit)."""
    arr = np.ascontiguousarray(image)
    if not arr.flags.writeable:  # torch warns on read-only arrays (e.g. decoded video frames, np.broadcast)
        arr = arr.copy()
    t = torch.from_numpy(arr).permute(2, 0, 1).to(torch.float32).div_(255.0)
    m = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return t.sub_(m).div_(s)


# ==========================================================================================================
# Affine bookkeeping
# ==========================================================================================================
def _rng(rng) -> np.random.Generator:
    if rng is None:
        return np.random.default_rng(random.getrandbits(64))
    if isinstance(rng, (int, np.integer)):
        return np.random.default_rng(int(rng))
    return rng


def _as3(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    if m.shape == (3, 3):
        return m
    out = np.eye(3)
    out[:2] = m
    return out


def apply_affine(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) or (3, 3) affine to points (..., 2); returns float64 (..., 2)."""
    p = np.asarray(points, dtype=np.float64)
    m = np.asarray(matrix, dtype=np.float64)
    return p @ m[:2, :2].T + m[:2, 2]


def transform_boxes(boxes: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Continuous xyxy boxes through a pixel-index affine: the box of the four transformed corners."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(b) == 0:
        return b.copy()
    corners = np.stack([b[:, [0, 1]], b[:, [2, 1]], b[:, [0, 3]], b[:, [2, 3]]], axis=1) - 0.5   # (N, 4, 2)
    c = apply_affine(corners, matrix) + 0.5
    return np.concatenate([c.min(1), c.max(1)], axis=1)


def flip_matrix(width: float) -> np.ndarray:
    """x -> width - 1 - x (pixel indices; the continuous box x1 -> width - x2)."""
    return np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def inverse_affine(sample_or_matrix) -> np.ndarray:
    """(3, 3) inverse of ``sample["affine"]`` (current pixels -> original pixels)."""
    m = sample_or_matrix.get("affine", np.eye(3)) if isinstance(sample_or_matrix, dict) else sample_or_matrix
    return np.linalg.inv(_as3(m))


def _prepare(sample: dict) -> dict:
    """Give a raw sample the fields transforms maintain (float64 keypoints/boxes, identity affine)."""
    if "affine" not in sample:
        sample["affine"] = np.eye(3)
        sample["keypoints"] = np.array(sample["keypoints"], dtype=np.float64)
        sample["boxes"] = np.array(sample.get("boxes", np.zeros((0, 4))), dtype=np.float64).reshape(-1, 4)
        sample.setdefault("flipped", False)
    return sample


def _geometric(sample: dict, m: np.ndarray, keypoints: bool = True) -> None:
    """Move keypoints, boxes and the affine of ``sample`` through the pixel-index affine ``m``."""
    m = _as3(m)
    if keypoints:
        kp = sample["keypoints"]
        kp[..., :2] = apply_affine(kp[..., :2], m)
        sample["boxes"] = transform_boxes(sample["boxes"], m)
        if "box" in sample:
            sample["box"] = transform_boxes(np.asarray(sample["box"])[None], m)[0]
    sample["affine"] = m @ sample["affine"]


def warp_sample(sample: dict, matrix: np.ndarray, size: tuple[int, int]) -> dict:
    """Warp the sample's image to ``size`` (W, H) with the pixel-index affine ``matrix`` ((2, 3) or (3, 3); cv2
    bilinear, zero border) and move its keypoints, boxes and affine alike."""
    _prepare(sample)
    sample["image"] = cv2.warpAffine(sample["image"], _as3(matrix)[:2], tuple(int(v) for v in size))
    _geometric(sample, matrix)
    return sample


def select_people(sample: dict, keep) -> dict:
    """Keep only people ``keep`` (mask or indices) in every per-person array; remaps ``person_index``."""
    n = len(sample["keypoints"])
    idx = np.arange(n)[keep]
    for k in PERSON_KEYS:
        if k in sample:
            sample[k] = np.asarray(sample[k])[idx]
    if sample.get("person_index", -1) >= 0:
        where = np.nonzero(idx == sample["person_index"])[0]
        sample["person_index"] = int(where[0]) if len(where) else -1
    return sample


def _given(sample: dict) -> dict:
    """Augmentation parameters the sample asks to replay: ``sample["augment"]`` (e.g. a recorded meta["augment"])."""
    return sample.get("augment") or {}


def _record(sample: dict, **params) -> None:
    """Add drawn (or replayed) augmentation parameters to ``sample["augment"]`` (a new dict: the raw sample's own
    ``augment`` is never modified)."""
    sample["augment"] = {**_given(sample), **params}


def make_meta(sample: dict, **extra) -> dict:
    """The ``meta`` every method's sample carries (see regpose.models.base): ids, sizes and ``inverse`` (2, 3) from
    network-input pixels to original pixels, plus the top-down / bottom-up extras present in the sample."""
    h, w = sample["image"].shape[:2]
    meta = {
        "image_id": int(sample["image_id"]),
        "sample_index": int(sample["sample_index"]),
        "file_name": sample["file_name"],
        "orig_size": tuple(int(v) for v in sample["orig_size"]),
        "input_hw": (int(h), int(w)),
        "inverse": inverse_affine(sample)[:2].copy(),
    }
    for k in ("center", "scale", "rotation", "udp", "box", "box_score", "person_index", "flipped", "area_scale",
              "augment"):
        if k in sample:
            v = sample[k]
            meta[k] = np.array(v) if isinstance(v, np.ndarray) else v
    meta.update(extra)
    return meta


class Compose:
    """Apply transforms in order with one random generator per sample. Individual transforms update the sample
    dict in place; Compose works on a shallow copy (arrays are copied on first write), so the raw sample given
    to it is left as it was."""

    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = [t for t in transforms if t is not None]

    def __call__(self, sample: dict, rng=None) -> dict:
        rng = _rng(rng)
        sample = _prepare(dict(sample))
        for t in self.transforms:
            sample = t(sample, rng)
        return sample

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(type(t).__name__ for t in self.transforms) + ")"


# ==========================================================================================================
# Generic flip (bottom-up after the affine, one-stage)
# ==========================================================================================================
def _flip_keypoints(kp: np.ndarray, flip_index: np.ndarray, width: float) -> np.ndarray:
    if kp.shape[-2] != len(flip_index):
        raise ValueError(f"flip_index has {len(flip_index)} entries but samples have {kp.shape[-2]} keypoints")
    out = kp[..., flip_index, :].copy()
    out[..., 0] = width - 1.0 - out[..., 0]
    return out


class HorizontalFlip:
    """Mirror the image with probability ``prob``: x -> W - 1 - x, left/right keypoints swapped via ``flip_index``.
    Bottom-up output layers (``sample["outputs"]``) flip at their own resolution R: x -> R - 1 - x, as DEKR's
    ``RandomHorizontalFlip`` does for its joints and masks. Official code (DEKR, train_step README Q5): the image
    is mirrored in input pixels and the joints in output pixels, so in a flipped sample the labels sit
    (1 - 1/stride) output pixels (0.75 at stride 4) left of the image content; kept, as the official flip test
    assumes it.
    The decision is recorded as ``augment["flip"]``; a given ``augment["flip"]`` is replayed."""

    def __init__(self, flip_index: Sequence[int], prob: float = 0.5):
        self.flip_index = np.asarray(flip_index, dtype=np.int64)
        self.prob = prob

    def draw(self, rng) -> bool:
        """Official ``RandomHorizontalFlip``: flip when U[0, 1) < prob."""
        return bool(rng.random() < self.prob)

    def __call__(self, sample: dict, rng=None) -> dict:
        rng = _rng(rng)
        _prepare(sample)
        given = _given(sample)
        flip = bool(given["flip"]) if "flip" in given else self.draw(rng)
        _record(sample, flip=flip)
        if not flip:
            return sample
        img = sample["image"]
        w = img.shape[1]
        sample["image"] = np.ascontiguousarray(img[:, ::-1])
        if "mask" in sample:
            sample["mask"] = np.ascontiguousarray(sample["mask"][:, ::-1])
        f = flip_matrix(w)
        sample["keypoints"] = _flip_keypoints(sample["keypoints"], self.flip_index, w)
        sample["boxes"] = transform_boxes(sample["boxes"], f)
        if "box" in sample:
            sample["box"] = transform_boxes(np.asarray(sample["box"])[None], f)[0]
        sample["affine"] = f @ sample["affine"]
        for layer in sample.get("outputs", []):
            r = layer["mask"].shape[1] if "mask" in layer else layer["size"]
            layer["keypoints"] = _flip_keypoints(layer["keypoints"], self.flip_index, r)
            if "mask" in layer:
                layer["mask"] = np.ascontiguousarray(layer["mask"][:, ::-1])
            layer["affine"] = flip_matrix(r) @ layer["affine"]
        sample["flipped"] = not sample.get("flipped", False)
        return sample


# ==========================================================================================================
# One-stage (detectron2 semantics)
# ==========================================================================================================
def _pil_resize(image: np.ndarray, new_w: int, new_h: int) -> np.ndarray:
    """detectron2 ``ResizeTransform`` on uint8: PIL bilinear (antialiased when shrinking)."""
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))


def shortest_edge_size(h: int, w: int, short: float, max_size: float) -> tuple[int, int]:
    """detectron2 ``ResizeShortestEdge.get_output_shape`` -> (new_h, new_w)."""
    size = short * 1.0
    scale = size / min(h, w)
    if h < w:
        newh, neww = size, scale * w
    else:
        newh, neww = scale * h, size
    if max(newh, neww) > max_size:
        scale = max_size * 1.0 / max(newh, neww)
        newh = newh * scale
        neww = neww * scale
    return int(newh + 0.5), int(neww + 0.5)


class ResizeShortestEdge:
    """Resize so the short side is one of ``short_edge_length`` ("choice") or drawn from its [lo, hi] ("range"),
    the long side at most ``max_size`` (detectron2). Coordinates scale about pixel edges:
    x' + 0.5 = (x + 0.5) * new_w / w."""

    def __init__(self, short_edge_length: int | Sequence[int], max_size: float = sys.maxsize,
                 sample_style: str = "choice"):
        if isinstance(short_edge_length, (int, np.integer)):
            short_edge_length = (int(short_edge_length), int(short_edge_length))
        self.short = tuple(int(s) for s in short_edge_length)
        self.max_size = max_size
        if sample_style not in ("choice", "range"):
            raise ValueError(f"sample_style must be 'choice' or 'range', got {sample_style!r}")
        if sample_style == "range" and len(self.short) != 2:
            raise ValueError("sample_style 'range' needs (min, max) short edge lengths")
        self.sample_style = sample_style

    def __call__(self, sample: dict, rng=None) -> dict:
        rng = _rng(rng)
        _prepare(sample)
        img = sample["image"]
        h, w = img.shape[:2]
        if self.sample_style == "range":
            size = int(rng.integers(self.short[0], self.short[1] + 1))
        else:
            size = int(self.short[rng.integers(len(self.short))]) if len(self.short) > 1 else self.short[0]
        if size == 0:
            return sample
        nh, nw = shortest_edge_size(h, w, size, self.max_size)
        if (nh, nw) != (h, w):
            sample["image"] = _pil_resize(img, nw, nh)
        sx, sy = nw / w, nh / h
        _geometric(sample, np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5]]))
        return sample


class RandomCrop:
    """detectron2 ``RandomCrop``: crop size by ``crop_type`` ('absolute_range': h, w ~ U{min(h, a)..min(h, b)}),
    position uniform."""

    def __init__(self, crop_type: str = "absolute_range", crop_size: Sequence[float] = (384, 600)):
        if crop_type not in ("relative_range", "relative", "absolute", "absolute_range"):
            raise ValueError(f"unknown crop_type {crop_type!r}")
        self.crop_type = crop_type
        self.crop_size = tuple(crop_size)

    def _size(self, h: int, w: int, rng) -> tuple[int, int]:
        if self.crop_type == "relative":
            ch, cw = self.crop_size
            return int(h * ch + 0.5), int(w * cw + 0.5)
        if self.crop_type == "relative_range":
            cs = np.asarray(self.crop_size, dtype=np.float32)
            ch, cw = cs + rng.random(2) * (1 - cs)
            return int(h * ch + 0.5), int(w * cw + 0.5)
        a, b = int(self.crop_size[0]), int(self.crop_size[1])
        if self.crop_type == "absolute":
            return min(a, h), min(b, w)
        if a > b:
            raise ValueError(f"absolute_range crop size must be (min, max), got {self.crop_size}")
        return int(rng.integers(min(h, a), min(h, b) + 1)), int(rng.integers(min(w, a), min(w, b) + 1))

    def __call__(self, sample: dict, rng=None) -> dict:
        rng = _rng(rng)
        _prepare(sample)
        h, w = sample["image"].shape[:2]
        ch, cw = self._size(h, w, rng)
        y0 = int(rng.integers(h - ch + 1))
        x0 = int(rng.integers(w - cw + 1))
        sample["image"] = np.ascontiguousarray(sample["image"][y0:y0 + ch, x0:x0 + cw])
        _geometric(sample, np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0]]))
        return sample


class OneStageAnnotations:
    """detectron2 annotation clean-up after the geometric transforms: crowd people removed, keypoints outside the
    image (continuous [0, W] x [0, H]) become unlabelled (v = 0, x = y = 0), boxes clipped to the image, people with
    an empty box (side <= 1e-5) removed."""

    def __init__(self, drop_crowd: bool = True, zero_unlabelled: bool = True):
        self.drop_crowd = drop_crowd
        self.zero_unlabelled = zero_unlabelled

    def __call__(self, sample: dict, rng=None) -> dict:
        _prepare(sample)
        h, w = sample["image"].shape[:2]
        if self.drop_crowd and "iscrowd" in sample:
            select_people(sample, ~np.asarray(sample["iscrowd"], bool))
        kp = sample["keypoints"]
        xc, yc = kp[..., 0] + 0.5, kp[..., 1] + 0.5
        inside = (xc >= 0) & (xc <= w) & (yc >= 0) & (yc <= h)
        kp[..., 2] = np.where(inside, kp[..., 2], 0.0)
        if self.zero_unlabelled:
            kp[kp[..., 2] == 0] = 0.0
        b = sample["boxes"]
        b[:, [0, 2]] = b[:, [0, 2]].clip(0, w)
        b[:, [1, 3]] = b[:, [1, 3]].clip(0, h)
        select_people(sample, ((b[:, 2] - b[:, 0]) > 1e-5) & ((b[:, 3] - b[:, 1]) > 1e-5))
        return sample


class OneStageAugmentation:
    """Sparse R-CNN / QueryPose training mapper (reference/querypose/spec.md §8): with probability ``1 - crop_prob``
    flip -> short side from ``min_sizes`` (max ``max_size``); otherwise flip -> short side from ``crop_pre_sizes``
    (no max) -> random crop -> short side from ``min_sizes``. Followed by :class:`OneStageAnnotations`."""

    def __init__(self, flip_index: Sequence[int], min_sizes: Sequence[int] = tuple(range(480, 801, 32)),
                 max_size: int = 1333, sample_style: str = "choice", flip_prob: float = 0.5, crop: bool = True,
                 crop_prob: float = 0.5, crop_pre_sizes: Sequence[int] = (400, 500, 600),
                 crop_type: str = "absolute_range", crop_size: Sequence[float] = (384, 600)):
        self.flip = HorizontalFlip(flip_index, flip_prob)
        self.resize = ResizeShortestEdge(min_sizes, max_size, sample_style)
        self.crop = crop
        self.crop_prob = crop_prob
        self.pre_resize = ResizeShortestEdge(crop_pre_sizes, sys.maxsize, "choice")
        self.random_crop = RandomCrop(crop_type, crop_size)
        self.annotations = OneStageAnnotations()

    def __call__(self, sample: dict, rng=None) -> dict:
        rng = _rng(rng)
        _prepare(sample)
        sample = self.flip(sample, rng)
        if self.crop and rng.random() < self.crop_prob:
            sample = self.pre_resize(sample, rng)
            sample = self.random_crop(sample, rng)
        sample = self.resize(sample, rng)
        return self.annotations(sample, rng)


# ==========================================================================================================
# Bottom-up (DEKR)
# ==========================================================================================================
def dekr_affine_matrix(center: Sequence[float], scale: float, res: int, rot: float = 0.0) -> tuple[np.ndarray, float]:
    """DEKR ``RandomAffineTransform._get_affine_matrix``: scale ``res / (200 s)``, translation ``res (0.5 - c/(200 s))``,
    then rotation by ``-rot`` degrees about (res/2, res/2). Returns (3x3, t00 * t11)."""
    h = 200.0 * scale
    t = np.zeros((3, 3))
    t[0, 0] = float(res) / h
    t[1, 1] = float(res) / h
    t[0, 2] = res * (-float(center[0]) / h + 0.5)
    t[1, 2] = res * (-float(center[1]) / h + 0.5)
    t[2, 2] = 1.0
    area_scale = t[0, 0] * t[1, 1]
    if rot != 0:
        rot_rad = -rot * np.pi / 180.0  # official: rot = -rot "to match direction of rotation from cropping"
        sn, cs = np.sin(rot_rad), np.cos(rot_rad)
        rot_mat = np.zeros((3, 3))
        rot_mat[0, :2] = [cs, -sn]
        rot_mat[1, :2] = [sn, cs]
        rot_mat[2, 2] = 1.0
        t_mat = np.eye(3)
        t_mat[0, 2] = -res / 2
        t_mat[1, 2] = -res / 2
        t_inv = t_mat.copy()
        t_inv[:2, 2] *= -1
        t = t_inv @ (rot_mat @ (t_mat @ t))
    return t, area_scale


class BottomUpRandomAffine:
    """DEKR training affine to a square input (reference/dekr/spec.md §2.2).

    s = min(h, w)/200 ('short') x U[min_scale, max_scale); rotation U(-max_rotation, max_rotation); integer shift
    of the centre in [-max_translate s, max_translate s) (bounds truncated to int, as numpy's randint on floats).
    The image is warped to ``input_size`` (bilinear, zero border). For each of ``output_sizes`` an output layer is
    added to ``sample["outputs"]``: keypoints at that resolution and, if ``mask`` is on, the ignore mask warped with
    DEKR's uint8 x 255 / threshold-0.5 recipe. ``sample["area_scale"]`` is (input_size / 200 s)², the factor DEKR
    multiplies its person areas by. The parameters (``center`` in original pixels, ``scale`` in units of 200 px,
    ``rotation`` in degrees) are recorded in ``sample["augment"]``, and replayed when the sample brings them.

    Official code: the ignore mask is warped at the output resolution with a zero border, so everything outside
    the source image is ignored (weight 0 in the heatmap loss, background included; train_step README Q6)."""

    def __init__(self, input_size: int = 512, output_sizes: Sequence[int] = (128,), scale_type: str = "short",
                 min_scale: float = 0.75, max_scale: float = 1.5, max_rotation: float = 30.0,
                 max_translate: float = 40.0, mask: bool = True):
        self.input_size = int(input_size)
        self.output_sizes = tuple(int(r) for r in output_sizes)
        if scale_type not in ("short", "long"):
            raise ValueError(f"scale_type must be 'short' or 'long', got {scale_type!r}")
        self.scale_type = scale_type
        self.min_scale, self.max_scale = min_scale, max_scale
        self.max_rotation = max_rotation
        self.max_translate = max_translate
        self.mask = mask

    def draw(self, h: int, w: int, rng) -> dict:
        """Random parameters as the official ``RandomAffineTransform`` draws them, in its order: scale u, rotation u,
        then the integer shifts dx, dy of the centre (w/2, h/2) from [int(-t s), int(t s)) (numpy truncates float
        bounds toward 0 and excludes ``high``; train_step README Q2), s being the already augmented scale."""
        center = np.array((w / 2, h / 2))
        scale = (min(h, w) if self.scale_type == "short" else max(h, w)) / 200.0
        scale *= rng.random() * (self.max_scale - self.min_scale) + self.min_scale
        rot = (rng.random() * 2 - 1) * self.max_rotation
        if self.max_translate > 0:
            lo, hi = int(-self.max_translate * scale), int(self.max_translate * scale)
            center[0] += int(rng.integers(lo, hi)) if hi > lo else 0
            center[1] += int(rng.integers(lo, hi)) if hi > lo else 0
        return {"center": center, "scale": float(scale), "rotation": float(rot)}

    def __call__(self, sample: dict, rng=None) -> dict:
        rng = _rng(rng)
        _prepare(sample)
        image = sample["image"]
        h, w = image.shape[:2]
        given = _given(sample)
        params = {k: given[k] for k in ("center", "scale", "rotation")} if "center" in given else self.draw(h, w, rng)
        _record(sample, **params)
        center, scale, rot = np.asarray(params["center"], dtype=np.float64), params["scale"], params["rotation"]
        kp0 = sample["keypoints"].copy()
        aff0 = sample["affine"]
        mask0 = None
        if self.mask and self.output_sizes:
            mask0 = sample.get("mask")
            if mask0 is None and "record" in sample:
                mask0 = ignore_mask(sample["record"], h, w)
            elif mask0 is None:                  # nothing to ignore in the image; its padding still is (Q6)
                mask0 = np.ones((h, w), np.float32)
        layers = []
        for r in self.output_sizes:
            m_out, _ = dekr_affine_matrix(center, scale, r, rot)
            kp = kp0.copy()
            kp[..., :2] = apply_affine(kp[..., :2], m_out)
            layer = {"size": r, "keypoints": kp, "affine": m_out @ aff0}
            if mask0 is not None:
                mk = cv2.warpAffine((mask0 * 255).astype(np.uint8), m_out[:2], (r, r)) / 255
                layer["mask"] = (mk > 0.5).astype(np.float32)
            layers.append(layer)
        m_in, area_scale = dekr_affine_matrix(center, scale, self.input_size, rot)
        sample["image"] = cv2.warpAffine(image, m_in[:2], (self.input_size, self.input_size))
        sample.pop("mask", None)
        _geometric(sample, m_in)
        sample["outputs"] = layers
        sample["area_scale"] = float(area_scale)
        return sample


# ==========================================================================================================
# Top-down (mmpose / Poseur)
# ==========================================================================================================
def box_to_center_scale(box_xywh: Sequence[float], aspect_ratio: float, padding: float = 1.25,
                        pixel_std: float = 200.0) -> tuple[np.ndarray, np.ndarray]:
    """mmpose ``_xywh2cs`` (reference/poseur/spec.md §1.1): centre = box centre, box extended to the input aspect
    ratio, scale = (w, h) / 200 x padding; float32 as the official code."""
    x, y, w, h = (float(v) for v in box_xywh[:4])
    center = np.array([x + w * 0.5, y + h * 0.5], dtype=np.float32)
    if w > aspect_ratio * h:
        h = w * 1.0 / aspect_ratio
    elif w < aspect_ratio * h:
        w = h * aspect_ratio
    scale = np.array([w / pixel_std, h / pixel_std], dtype=np.float32)
    return center, scale * padding


def _rotate_point(pt, angle_rad):
    sn, cs = np.sin(angle_rad), np.cos(angle_rad)
    return [pt[0] * cs - pt[1] * sn, pt[0] * sn + pt[1] * cs]


def _third_point(a, b):
    d = a - b
    return b + np.array([-d[1], d[0]], dtype=np.float32)


def get_affine_transform(center, scale, rot: float, output_size, shift=(0.0, 0.0), inv: bool = False) -> np.ndarray:
    """mmpose's 3-point ``get_affine_transform`` (reference/poseur/spec.md §1.2): centre -> output centre, the
    rotated half-width vector -> (0, -W/2); float32 points solved by ``cv2.getAffineTransform``. (2, 3)."""
    scale = np.asarray(scale)
    scale_tmp = scale * 200.0
    shift = np.asarray(shift)
    src_w = scale_tmp[0]
    dst_w, dst_h = output_size[0], output_size[1]
    rot_rad = np.pi * rot / 180
    src_dir = _rotate_point([0.0, src_w * -0.5], rot_rad)
    dst_dir = np.array([0.0, dst_w * -0.5])
    src = np.zeros((3, 2), dtype=np.float32)
    src[0, :] = center + scale_tmp * shift
    src[1, :] = center + src_dir + scale_tmp * shift
    src[2, :] = _third_point(src[0, :], src[1, :])
    dst = np.zeros((3, 2), dtype=np.float32)
    dst[0, :] = [dst_w * 0.5, dst_h * 0.5]
    dst[1, :] = np.array([dst_w * 0.5, dst_h * 0.5]) + dst_dir
    dst[2, :] = _third_point(dst[0, :], dst[1, :])
    if inv:
        return cv2.getAffineTransform(np.float32(dst), np.float32(src))
    return cv2.getAffineTransform(np.float32(src), np.float32(dst))


def get_warp_matrix(theta: float, size_input, size_dst, size_target) -> np.ndarray:
    """UDP warp matrix (Huang et al. 2020; mmpose ``get_warp_matrix``): maps the box of size ``size_target``
    centred at ``size_input / 2`` to ``size_dst`` (= input size - 1), rotated by ``theta`` degrees. (2, 3) float32."""
    theta = np.deg2rad(theta)
    m = np.zeros((2, 3), dtype=np.float32)
    sx = size_dst[0] / size_target[0]
    sy = size_dst[1] / size_target[1]
    m[0, 0] = math.cos(theta) * sx
    m[0, 1] = -math.sin(theta) * sx
    m[0, 2] = sx * (-0.5 * size_input[0] * math.cos(theta) + 0.5 * size_input[1] * math.sin(theta)
                    + 0.5 * size_target[0])
    m[1, 0] = math.sin(theta) * sy
    m[1, 1] = math.cos(theta) * sy
    m[1, 2] = sy * (-0.5 * size_input[0] * math.sin(theta) - 0.5 * size_input[1] * math.cos(theta)
                    + 0.5 * size_target[1])
    return m


def transform_preds(coords: np.ndarray, center, scale, output_size, use_udp: bool = False) -> np.ndarray:
    """mmpose ``transform_preds`` (reference/poseur/spec.md §1.4): crop (or heatmap) coordinates -> image, by the
    closed form ``x * (200 s) / W + c - 100 s`` (UDP: divide by W - 1). Extra columns are copied."""
    coords = np.asarray(coords, dtype=np.float64)
    scale = np.asarray(scale, dtype=np.float64) * 200.0
    center = np.asarray(center, dtype=np.float64)
    if use_udp:
        sx, sy = scale[0] / (output_size[0] - 1.0), scale[1] / (output_size[1] - 1.0)
    else:
        sx, sy = scale[0] / output_size[0], scale[1] / output_size[1]
    out = coords.copy()
    out[..., 0] = coords[..., 0] * sx + center[0] - scale[0] * 0.5
    out[..., 1] = coords[..., 1] * sy + center[1] - scale[1] * 0.5
    return out


def _person_keypoints(sample: dict) -> np.ndarray | None:
    i = sample.get("person_index", -1)
    return sample["keypoints"][i] if i is not None and i >= 0 else None


class TopDownGetBboxCenterScale:
    """``sample["box_xywh"]`` -> ``center``, ``scale`` (aspect ratio of ``input_size`` (W, H), padding 1.25),
    ``rotation`` 0."""

    def __init__(self, input_size: Sequence[int], padding: float = 1.25):
        self.aspect_ratio = input_size[0] / input_size[1]
        self.padding = padding

    def __call__(self, sample: dict, rng=None) -> dict:
        _prepare(sample)
        box = sample.get("box_xywh")
        if box is None:
            b = np.asarray(sample["box"], dtype=np.float64)
            box = np.array([b[0], b[1], b[2] - b[0], b[3] - b[1]])
        sample["center"], sample["scale"] = box_to_center_scale(box, self.aspect_ratio, self.padding)
        sample["rotation"] = 0.0
        return sample


class TopDownRandomFlip:
    """mmpose ``TopDownRandomFlip``: with probability ``prob`` mirror the whole image (x -> W - 1 - x, pairs
    swapped) and the centre (c_x -> W - c_x - 1)."""

    def __init__(self, flip_index: Sequence[int], prob: float = 0.5):
        self.flip_index = np.asarray(flip_index, dtype=np.int64)
        self.prob = prob

    def __call__(self, sample: dict, rng=None) -> dict:
        rng = _rng(rng)
        _prepare(sample)
        if not (rng.random() <= self.prob):
            return sample
        img = sample["image"]
        w = img.shape[1]
        sample["image"] = np.ascontiguousarray(img[:, ::-1])
        f = flip_matrix(w)
        sample["keypoints"] = _flip_keypoints(sample["keypoints"], self.flip_index, w)
        sample["boxes"] = transform_boxes(sample["boxes"], f)
        if "box" in sample:
            sample["box"] = transform_boxes(np.asarray(sample["box"])[None], f)[0]
        if "center" in sample:
            c = np.array(sample["center"], copy=True)
            c[0] = w - c[0] - 1
            sample["center"] = c
        sample["affine"] = f @ sample["affine"]
        sample["flipped"] = not sample.get("flipped", False)
        return sample


class TopDownHalfBody:
    """mmpose ``TopDownHalfBodyTransform``: if more than ``num_joints`` joints are labelled and U < ``prob``, re-centre
    on the upper (if a standard-normal draw < 0.5 and > 2 upper joints) or lower body; box aspect-fixed, scale x 1.5."""

    def __init__(self, upper_body_ids: Sequence[int], input_size: Sequence[int], num_joints: int = 8,
                 prob: float = 0.3, padding: float = 1.5):
        self.upper = set(int(i) for i in upper_body_ids)
        self.aspect_ratio = input_size[0] / input_size[1]
        self.num_joints = num_joints
        self.prob = prob
        self.padding = padding

    def __call__(self, sample: dict, rng=None) -> dict:
        rng = _rng(rng)
        kp = _person_keypoints(sample)
        if kp is None:
            return sample
        vis = kp[:, 2] > 0
        if not (vis.sum() > self.num_joints and rng.random() < self.prob):
            return sample
        ids = np.nonzero(vis)[0]
        up = [i for i in ids if i in self.upper]
        low = [i for i in ids if i not in self.upper]
        if rng.standard_normal() < 0.5 and len(up) > 2:
            sel = up
        elif len(low) > 2:
            sel = low
        else:
            sel = up
        if len(sel) < 2:
            return sample
        pts = kp[sel, :2].astype(np.float32)
        center = pts.mean(axis=0)
        lt, rb = pts.min(axis=0), pts.max(axis=0)
        w, h = rb[0] - lt[0], rb[1] - lt[1]
        if w > self.aspect_ratio * h:
            h = w * 1.0 / self.aspect_ratio
        elif w < self.aspect_ratio * h:
            w = h * self.aspect_ratio
        sample["center"] = center
        sample["scale"] = np.array([w / 200.0, h / 200.0], dtype=np.float32) * self.padding
        return sample


class TopDownRandomScaleRotation:
    """mmpose ``TopDownGetRandomScaleRotation``: scale x clip(N(0,1) f + 1, 1 - f, 1 + f); rotation
    clip(N(0,1) r, -2r, 2r) with probability ``rot_prob``, else 0."""

    def __init__(self, scale_factor: float = 0.5, rot_factor: float = 40.0, rot_prob: float = 0.6):
        self.sf, self.rf, self.rot_prob = scale_factor, rot_factor, rot_prob

    def __call__(self, sample: dict, rng=None) -> dict:
        rng = _rng(rng)
        s_factor = np.clip(rng.standard_normal() * self.sf + 1, 1 - self.sf, 1 + self.sf)
        sample["scale"] = sample["scale"] * s_factor
        r_factor = np.clip(rng.standard_normal() * self.rf, -self.rf * 2, self.rf * 2)
        sample["rotation"] = float(r_factor) if rng.random() <= self.rot_prob else 0.0
        return sample


class TopDownAffine:
    """Warp the person crop to ``input_size`` (W, H) (cv2 bilinear, black border) with mmpose's
    ``get_affine_transform`` (spec §1.2) or, with ``udp``, the unbiased ``get_warp_matrix``; keypoints follow."""

    def __init__(self, input_size: Sequence[int], udp: bool = False):
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.udp = udp

    def matrix(self, center, scale, rotation: float) -> np.ndarray:
        if self.udp:
            size = np.array(self.input_size, dtype=np.float32)
            return get_warp_matrix(rotation, np.asarray(center) * 2.0, size - 1.0, np.asarray(scale) * 200.0)
        return get_affine_transform(center, scale, rotation, self.input_size)

    def __call__(self, sample: dict, rng=None) -> dict:
        m = self.matrix(sample["center"], sample["scale"], sample.get("rotation", 0.0))
        warp_sample(sample, m, self.input_size)
        sample["udp"] = self.udp
        return sample


# ==========================================================================================================
# Colour
# ==========================================================================================================
class ColorJitter:
    """Brightness, contrast, saturation (factors U[1 - x, 1 + x]) and hue (shift U[-x, x] of a full turn) in
    random order, on uint8 RGB."""

    def __init__(self, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4, hue: float = 0.1,
                 prob: float = 1.0):
        self.b, self.c, self.s, self.h, self.prob = brightness, contrast, saturation, hue, prob

    def __call__(self, sample: dict, rng=None) -> dict:
        rng = _rng(rng)
        if not (rng.random() < self.prob):
            return sample
        img = sample["image"].astype(np.float32)
        for op in rng.permutation(4):
            if op == 0 and self.b > 0:
                img = img * rng.uniform(1 - self.b, 1 + self.b)
            elif op == 1 and self.c > 0:
                mean = (img @ np.array([0.299, 0.587, 0.114], np.float32)).mean()
                img = (img - mean) * rng.uniform(1 - self.c, 1 + self.c) + mean
            elif op == 2 and self.s > 0:
                gray = (img @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
                img = (img - gray) * rng.uniform(1 - self.s, 1 + self.s) + gray
            elif op == 3 and self.h > 0:
                hsv = cv2.cvtColor(np.clip(img, 0, 255).astype(np.uint8), cv2.COLOR_RGB2HSV_FULL)
                shift = int(round(rng.uniform(-self.h, self.h) * 256))
                hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + shift) % 256).astype(np.uint8)
                img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL).astype(np.float32)
            img = np.clip(img, 0, 255)
        sample["image"] = img.astype(np.uint8)
        return sample


class PhotometricDistortion:
    """mmcv ``PhotometricDistortion`` as Poseur's W48 configs use it (reference/poseur/spec.md §1.7): brightness
    delta, contrast (before or after the HSV steps), saturation, hue, each with probability 0.5.

    ``official_quirks``: the HSV conversion treats the RGB array as BGR and the random channel swap is computed
    but discarded (so it has no effect), exactly as the released code; off: proper RGB -> HSV and no swap."""

    def __init__(self, brightness_delta: int = 32, contrast_range=(0.5, 1.5), saturation_range=(0.5, 1.5),
                 hue_delta: int = 18, official_quirks: bool = True):
        self.bd = brightness_delta
        self.cl, self.cu = contrast_range
        self.sl, self.su = saturation_range
        self.hd = hue_delta
        self.quirks = official_quirks

    @staticmethod
    def _convert(img, alpha=1.0, beta=0.0):
        return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    def _hsv(self, img):
        return cv2.cvtColor(img, cv2.COLOR_BGR2HSV if self.quirks else cv2.COLOR_RGB2HSV)

    def _rgb(self, hsv):
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR if self.quirks else cv2.COLOR_HSV2RGB)

    def __call__(self, sample: dict, rng=None) -> dict:
        rng = _rng(rng)
        img = sample["image"]
        if rng.integers(2):
            img = self._convert(img, beta=rng.uniform(-self.bd, self.bd))
        mode = rng.integers(2)
        if mode == 1 and rng.integers(2):
            img = self._convert(img, alpha=rng.uniform(self.cl, self.cu))
        if rng.integers(2):
            hsv = self._hsv(img)
            hsv[..., 1] = self._convert(hsv[..., 1], alpha=rng.uniform(self.sl, self.su))
            img = self._rgb(hsv)
        if rng.integers(2):
            hsv = self._hsv(img)
            hsv[..., 0] = (hsv[..., 0].astype(int) + int(rng.integers(-self.hd, self.hd))) % 180
            img = self._rgb(hsv)
        if mode == 0 and rng.integers(2):
            img = self._convert(img, alpha=rng.uniform(self.cl, self.cu))
        if rng.integers(2):
            perm = rng.permutation(3)
            if not self.quirks:  # the official code computes img[..., perm] and drops the result
                img = img[..., perm]
        sample["image"] = np.ascontiguousarray(img)
        return sample


class Cutout:
    """One elliptical black patch (Poseur W48 configs, spec §1.7): centre uniform in the image, radii
    0.2 (1 + U[0, 1)) x image width per axis; applied with probability ``prob``."""

    def __init__(self, prob: float = 1.0):
        self.prob = prob

    def __call__(self, sample: dict, rng=None) -> dict:
        rng = _rng(rng)
        if not (rng.random() < self.prob):
            return sample
        img = sample["image"].copy()
        h, w = img.shape[:2]
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        rx, ry = 0.2 * (1 + rng.random()) * w, 0.2 * (1 + rng.random()) * w
        yy, xx = np.ogrid[:h, :w]
        img[((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0] = 0
        sample["image"] = img
        return sample


# ==========================================================================================================
# Builders from cfg.data
# ==========================================================================================================
def color_transforms(data_cfg) -> list:
    c = data_cfg.augment.color
    out: list = []
    if c.kind == "jitter":
        out.append(ColorJitter(c.brightness, c.contrast, c.saturation, c.hue))
    elif c.kind == "photometric":
        out.append(PhotometricDistortion(c.brightness_delta, c.contrast_range, c.saturation_range, c.hue_delta,
                                         c.official_quirks))
    if c.cutout:
        out.append(Cutout(c.cutout_prob))
    return out


def _square(size) -> int:
    w, h = (size, size) if isinstance(size, (int, np.integer)) else size
    if w != h:
        raise ValueError(f"bottom-up input must be square, got {w}x{h}")
    return int(w)


def bottomup_train_transforms(data_cfg, flip_index: Sequence[int] | None = None,
                              output_sizes: Sequence[int] = (), mask: bool = True) -> Compose:
    """DEKR pipeline: random affine to ``data.input_size`` (+ output layers), flip, colour. ``flip_index`` may be
    extended by the caller (DEKR passes K+1 entries for its centre point)."""
    a = data_cfg.augment.bottomup
    fi = keypoint_layout(data_cfg).flip_index if flip_index is None else flip_index
    return Compose([BottomUpRandomAffine(_square(data_cfg.input_size), output_sizes, a.scale_type, a.min_scale,
                                         a.max_scale, a.max_rotation, a.max_translate, mask),
                    HorizontalFlip(fi, a.flip_prob), *color_transforms(data_cfg)])


def onestage_train_transforms(data_cfg, flip_index: Sequence[int] | None = None) -> Compose:
    a = data_cfg.augment.onestage
    fi = keypoint_layout(data_cfg).flip_index if flip_index is None else flip_index
    return Compose([OneStageAugmentation(fi, a.min_sizes, a.max_size, a.sample_style, a.flip_prob, a.crop,
                                         a.crop_prob, a.crop_pre_sizes, a.crop_type, a.crop_size),
                    *color_transforms(data_cfg)])


def onestage_test_transforms(data_cfg) -> Compose:
    a = data_cfg.augment.onestage
    return Compose([ResizeShortestEdge(a.test_size, a.test_max_size)])


def topdown_train_transforms(data_cfg) -> Compose:
    """Poseur / mmpose order (spec §1.7): centre/scale -> flip -> half body -> scale/rotation -> affine -> colour."""
    a = data_cfg.augment.topdown
    meta = keypoint_layout(data_cfg)
    size = data_cfg.input_size
    return Compose([TopDownGetBboxCenterScale(size, a.padding), TopDownRandomFlip(meta.flip_index, a.flip_prob),
                    TopDownHalfBody(meta.upper_body_ids, size, a.half_body_min_joints, a.half_body_prob,
                                    a.half_body_padding),
                    TopDownRandomScaleRotation(a.scale_factor, a.rot_factor, a.rot_prob),
                    TopDownAffine(size, a.udp), *color_transforms(data_cfg)])


def topdown_test_transforms(data_cfg) -> Compose:
    a = data_cfg.augment.topdown
    return Compose([TopDownGetBboxCenterScale(data_cfg.input_size, a.padding),
                    TopDownAffine(data_cfg.input_size, a.udp)])
