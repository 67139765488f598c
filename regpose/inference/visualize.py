"""Pictures of predicted poses: skeletons with one colour per limb, keypoints faded by their confidence, optional
person boxes, instance scores and track ids.

Transparency is per primitive: limbs and keypoints are drawn opaque into an overlay while the same shapes write
their confidence into an alpha map; one blend ``image * (1 - a) + overlay * a`` then fades every keypoint and limb
by its own confidence (OpenCV has no per-primitive alpha).
"""
from __future__ import annotations

import colorsys
from typing import Sequence

import cv2
import numpy as np

from ..structures import PoseResult

__all__ = ["limb_colors", "track_color", "draw_poses", "Renderer"]

_SHIFT = 4                       # fixed-point bits for sub-pixel anti-aliased drawing
_ONE = 1 << _SHIFT


def _hsv(h: float, s: float = 0.9, v: float = 1.0) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return int(r * 255), int(g * 255), int(b * 255)


def limb_colors(skeleton: Sequence[tuple[int, int]], left_ids: Sequence[int] = (),
                right_ids: Sequence[int] = ()) -> list[tuple[int, int, int]]:
    """One RGB colour per limb: left-side limbs in greens/cyans, right-side in reds/oranges, the rest (face,
    torso) in blues/violets, each limb a different shade so neighbouring limbs stay distinguishable."""
    left, right = set(left_ids), set(right_ids)
    groups: dict[str, list[int]] = {"left": [], "right": [], "centre": []}
    for i, (a, b) in enumerate(skeleton):
        side = "left" if {a, b} <= left else "right" if {a, b} <= right else "centre"
        groups[side].append(i)
    hue_range = {"left": (0.25, 0.50), "right": (0.0, 0.12), "centre": (0.55, 0.80)}
    colors: list[tuple[int, int, int]] = [(255, 255, 255)] * len(skeleton)
    for side, limbs in groups.items():
        lo, hi = hue_range[side]
        for j, i in enumerate(limbs):
            colors[i] = _hsv(lo + (hi - lo) * (j / max(1, len(limbs) - 1)))
    return colors


def track_color(track_id: int) -> tuple[int, int, int]:
    """A stable, well-spread RGB colour for a track id (golden-ratio hue steps)."""
    return _hsv(0.61803398875 * int(track_id) + 0.1, 0.75, 1.0)


def _keypoint_colors(num_keypoints: int, left_ids, right_ids) -> list[tuple[int, int, int]]:
    left, right = set(left_ids), set(right_ids)
    return [(60, 220, 60) if k in left else (255, 120, 40) if k in right else (80, 140, 255)
            for k in range(num_keypoints)]


def _fixed(xy: np.ndarray) -> tuple[int, int]:
    return int(round(float(xy[0]) * _ONE)), int(round(float(xy[1]) * _ONE))


def draw_poses(image: np.ndarray, result: PoseResult, skeleton: Sequence[tuple[int, int]] = (),
               left_ids: Sequence[int] = (), right_ids: Sequence[int] = (), *, kpt_threshold: float = 0.05,
               score_threshold: float = 0.0, show_boxes: bool = True, show_scores: bool = True,
               radius: int | None = None, thickness: int | None = None) -> np.ndarray:
    """Draw ``result`` on a copy of ``image`` (uint8 (H, W, 3), any channel order: colours are given as RGB).

    People scoring below ``score_threshold`` are left out; keypoints (and limbs touching them) with confidence
    below ``kpt_threshold`` are hidden, the others are drawn with opacity = min(1, confidence). Track ids in
    ``result.extras["track_id"]`` colour the person's box and label."""
    img = np.ascontiguousarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"draw_poses: expected a uint8 (H, W, 3) image, got {img.dtype} {img.shape}")
    h, w = img.shape[:2]
    size = min(h, w)
    radius = radius or max(2, int(round(size / 110)))
    thickness = thickness or max(1, int(round(size / 240)))
    if not len(result):
        return img.copy()
    keep = np.nonzero(np.asarray(result.scores) >= score_threshold)[0]
    order = keep[np.argsort(result.scores[keep], kind="stable")]          # best person drawn last (on top)
    kpts = np.asarray(result.keypoints, dtype=np.float64)
    k = kpts.shape[1]
    conf = np.clip(np.nan_to_num(kpts[..., 2], nan=0.0), 0.0, 1.0)
    shown = (kpts[..., 2] >= kpt_threshold) & np.isfinite(kpts[..., :2]).all(-1)
    limb_rgb = limb_colors(skeleton, left_ids, right_ids)
    kpt_rgb = _keypoint_colors(k, left_ids, right_ids)

    overlay = img.copy()
    alpha = np.zeros((h, w), np.uint8)                                  # opacity x 255
    for p in order:
        for (a, b), color in zip(skeleton, limb_rgb):
            if a >= k or b >= k or not (shown[p, a] and shown[p, b]):
                continue
            pa, pb = _fixed(kpts[p, a]), _fixed(kpts[p, b])
            cv2.line(overlay, pa, pb, color, thickness + 1, cv2.LINE_AA, _SHIFT)
            cv2.line(alpha, pa, pb, int(255 * min(conf[p, a], conf[p, b])), thickness + 1, cv2.LINE_AA, _SHIFT)
        for j in np.nonzero(shown[p])[0]:
            c = _fixed(kpts[p, j])
            cv2.circle(overlay, c, radius * _ONE, kpt_rgb[j], -1, cv2.LINE_AA, _SHIFT)
            cv2.circle(alpha, c, radius * _ONE, int(255 * conf[p, j]), -1, cv2.LINE_AA, _SHIFT)
    a = alpha[..., None].astype(np.float32) / 255.0
    out = (img.astype(np.float32) * (1.0 - a) + overlay.astype(np.float32) * a + 0.5).astype(np.uint8)

    tracks = result.extras.get("track_id")
    if show_boxes or show_scores or tracks is not None:
        font_scale = max(0.35, size / 1200)
        for p in order:
            tid = int(tracks[p]) if tracks is not None and int(tracks[p]) >= 0 else None
            color = track_color(tid) if tid is not None else (255, 255, 255)
            x1, y1, x2, y2 = (float(v) for v in result.boxes[p])
            if not np.isfinite([x1, y1, x2, y2]).all():
                continue
            if show_boxes:
                cv2.rectangle(out, _fixed((x1, y1)), _fixed((x2, y2)), color, 1, cv2.LINE_AA, _SHIFT)
            label = " ".join(s for s in (f"#{tid}" if tid is not None else "",
                                         f"{float(result.scores[p]):.2f}" if show_scores else "") if s)
            if label:
                org = (int(max(0.0, x1)), int(max(12.0, y1 - 3)))
                cv2.putText(out, label, org, cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), 3, cv2.LINE_AA)
                cv2.putText(out, label, org, cv2.FONT_HERSHEY_SIMPLEX, font_scale, color, 1, cv2.LINE_AA)
    return out


class Renderer:
    """:func:`draw_poses` bound to a keypoint layout (``regpose.data.keypoints.get_meta(format)``)."""

    def __init__(self, keypoint_format: str = "coco", *, kpt_threshold: float = 0.05, score_threshold: float = 0.0,
                 show_boxes: bool = True, show_scores: bool = True):
        from ..data.keypoints import get_meta

        meta = get_meta(keypoint_format)
        self.skeleton = meta.skeleton
        self.left_ids, self.right_ids = meta.left_ids, meta.right_ids
        self.options = dict(kpt_threshold=kpt_threshold, score_threshold=score_threshold, show_boxes=show_boxes,
                            show_scores=show_scores)

    def __call__(self, image: np.ndarray, result: PoseResult, **options) -> np.ndarray:
        return draw_poses(image, result, self.skeleton, self.left_ids, self.right_ids, **{**self.options, **options})
