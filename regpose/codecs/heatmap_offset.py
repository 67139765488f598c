"""DEKR's codec (bottom-up heatmap + offset, reference/dekr/spec.md §2-3): the targets of one training image, the
official test resize (scale 1 for the test sample, any scale of a multi-scale test), and the map of the network's
base-image poses back to the original image.

  * test-time resize: :func:`official_test_resize` (the policy: short side ceil64(input_size) x scale, long side
    rounded up to a multiple of 64, a similarity about the image centre), applied to a raw test sample by
    :class:`DEKRTestResize` and to a bare image at the other scales by :func:`resize_for_test` - one implementation;
  * encoding: :func:`encode` - keypoint + centre heatmaps with their weights and the ignore mask, offsets with
    their area weights (the official generators of :mod:`regpose.data.targets`);
  * decoding: :func:`map_poses` - poses in base-image (scale-1 input) pixels -> original pixels through the resize's
    inverse (official ``get_final_preds``).
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from ..data.targets import dekr_heatmaps, dekr_offsets
from ..data.transforms import warp_sample
from ..errors import ConfigError

__all__ = ["official_test_resize", "resize_for_test", "DEKRTestResize", "encode", "map_poses"]


def _ceil64(x: float) -> int:
    """Round up to a multiple of 64 (non-integer values too: 425 -> 448, 425.3 -> 448)."""
    return int(math.ceil(x / 64.0) * 64)


def official_test_resize(h: int, w: int, input_size: int, scale: float = 1.0):
    """Official resize policy: the short side goes to ceil64(input_size)*scale, the long side keeps the aspect ratio
    rounded *up* to a multiple of 64 (times scale); a similarity about the centre c = (int(w/2+0.5), int(h/2+0.5)),
    the closed form of the official 3-point construction (equal to 1e-14).

    Returns (W_r, H_r), the (2, 3) float64 affine original -> resized pixels, and its inverse. Raises the one-line
    ``test.scales`` error when a scale gives a size DEKR's HRNet cannot take (not a multiple of 32)."""
    base = _ceil64(input_size)
    if w < h:
        w_r, h_r = int(base * scale), int(_ceil64(base / w * h) * scale)
    else:
        h_r, w_r = int(base * scale), int(_ceil64(base / h * w) * scale)
    if w_r % 32 or h_r % 32:
        raise ConfigError(f"test.scales: scale {scale} gives a {w_r}x{h_r} input, not a multiple of 32 "
                          f"(DEKR's HRNet needs it); use scales like 0.5, 1, 1.5, 2")
    alpha = int(base * scale) / min(w, h)
    cx, cy = int(w / 2.0 + 0.5), int(h / 2.0 + 0.5)
    fwd = np.array([[alpha, 0.0, w_r / 2.0 - alpha * cx], [0.0, alpha, h_r / 2.0 - alpha * cy]])
    inv = np.array([[1 / alpha, 0.0, cx - w_r / 2.0 / alpha], [0.0, 1 / alpha, cy - h_r / 2.0 / alpha]])
    return (w_r, h_r), fwd, inv


def resize_for_test(image_rgb: np.ndarray, input_size: int, scale: float = 1.0):
    """Warp an RGB uint8 image with the official test resize (bilinear, zero border).
    Returns (resized uint8 (H_r, W_r, 3), inverse affine resized -> original)."""
    h, w = image_rgb.shape[:2]
    size, fwd, inv = official_test_resize(h, w, input_size, scale)
    return cv2.warpAffine(image_rgb, fwd, size), inv


class DEKRTestResize:
    """The official test resize of a raw sample (image, keypoints, boxes and affine alike; spec §3.1)."""

    def __init__(self, input_size: int, scale: float = 1.0):
        self.input_size = int(input_size)
        self.scale = float(scale)

    def __call__(self, sample: dict, rng=None) -> dict:
        h, w = sample["image"].shape[:2]
        size, fwd, _ = official_test_resize(h, w, self.input_size, self.scale)
        return warp_sample(sample, fwd, size)


def encode(joints: np.ndarray, area: np.ndarray, ignore_mask: np.ndarray, output_size: int, sigma: float,
           center_sigma: float, bg_weight: float, offset_radius: int) -> dict:
    """DEKR's targets of one image at output resolution R (spec §2.3-2.4): ``joints`` (P, K+1, 3) output pixels
    (last = centre), ``area`` (P,) the offset-weight areas, ``ignore_mask`` (R, R). Returns ``heatmap`` and
    ``heatmap_weight`` (K+1, R, R; weight before the mask), ``mask`` = ignore_mask x heatmap_weight (the
    heatmap-loss weight, official ``mask_list[0] * ignored``), ``offset`` / ``offset_weight`` (2K, R, R)."""
    out = {}
    out["heatmap"], out["heatmap_weight"] = dekr_heatmaps(joints, output_size, sigma, center_sigma, bg_weight)
    out["mask"] = ignore_mask[None] * out["heatmap_weight"]
    out["offset"], out["offset_weight"] = dekr_offsets(joints, area, output_size, offset_radius)
    return out


def map_poses(poses: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine to the xy of (P, K, 3) poses (float64 out, keypoint scores kept)."""
    a = np.asarray(inverse, dtype=np.float64)
    out = np.array(poses, dtype=np.float64, copy=True)
    xy = out[..., :2] @ a[:, :2].T + a[:, 2]
    out[..., :2] = xy
    return out
