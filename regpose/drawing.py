"""Pictures of poses people can read: one renderer for predictions (``regpose infer`` / ``demo``, ``Predictor.render``)
and for annotated training samples (``regpose show-data``), so both use the same colours and conventions.

- A keypoint whose confidence reaches ``kpt_threshold`` is drawn solid: a filled dot with a dark rim, its limbs as
  solid lines over a dark outline (legible on any background). Keypoints below it are still drawn, faded: a hollow
  ring, their limbs dashed. So an early or uncertain model shows its guesses instead of nothing, and a trained one
  shows at a glance which joints it is sure of. Which threshold suits a model depends on what its keypoint scores
  mean (``regpose.inference.visualize.display_defaults``).
- Limbs and keypoints are coloured by body side from the keypoint layout: left greens, right oranges, centre
  (face, torso) blues, each limb its own shade of its side.
- Dot radius and line width follow each person's size (the square root of the box area), bounded by the canvas, so a
  640x480 photo and a 72x96 training crop are both readable.
- Lives at the package top level (like :mod:`regpose.structures`) because the data layer (show-data) and the
  inference layer (predictions) both draw with it.
"""
from __future__ import annotations

import colorsys
from typing import Sequence

import cv2
import numpy as np

from .structures import PoseResult

__all__ = ["limb_sides", "limb_colors", "keypoint_colors", "track_color", "person_sizes", "draw_poses",
           "format_score", "FADED_ALPHA"]

_SHIFT = 4                       # fixed-point bits: sub-pixel anti-aliased drawing
_ONE = 1 << _SHIFT
FADED_ALPHA = 0.6                # opacity of below-threshold keypoints and limbs
_OUTLINE = (20, 20, 20)          # dark rim under solid limbs and around solid dots
# hue ranges (HSV, 0..1) per body side; keypoints take the middle of their side's range
_HUES = {"left": (0.22, 0.42), "right": (0.02, 0.13), "centre": (0.55, 0.72)}
# radius and line width as fractions of a person's size sqrt(box area)
_RADIUS_PER_SIZE, _THICKNESS_PER_SIZE = 0.03, 0.018


def _hsv(h: float, s: float = 0.85, v: float = 1.0) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return int(r * 255), int(g * 255), int(b * 255)


def limb_sides(skeleton: Sequence[tuple[int, int]], left_ids: Sequence[int] = (),
               right_ids: Sequence[int] = ()) -> list[str]:
    """'left' / 'right' when both ends of a limb are on that side, else 'centre' (face, shoulders, hips)."""
    left, right = set(left_ids), set(right_ids)
    return ["left" if {a, b} <= left else "right" if {a, b} <= right else "centre" for a, b in skeleton]


def limb_colors(skeleton: Sequence[tuple[int, int]], left_ids: Sequence[int] = (),
                right_ids: Sequence[int] = ()) -> list[tuple[int, int, int]]:
    """One RGB colour per limb: its side's hue range (left greens, right oranges, centre blues), each limb of a side
    a different shade so neighbouring limbs stay distinguishable."""
    sides = limb_sides(skeleton, left_ids, right_ids)
    colors: list[tuple[int, int, int]] = [(255, 255, 255)] * len(skeleton)
    for side, (lo, hi) in _HUES.items():
        limbs = [i for i, s in enumerate(sides) if s == side]
        for j, i in enumerate(limbs):
            colors[i] = _hsv(lo + (hi - lo) * (j / max(1, len(limbs) - 1)))
    return colors


def keypoint_colors(num_keypoints: int, left_ids: Sequence[int] = (),
                    right_ids: Sequence[int] = ()) -> list[tuple[int, int, int]]:
    """One RGB colour per keypoint: the middle of its side's hue range."""
    left, right = set(left_ids), set(right_ids)
    mid = {side: _hsv(sum(r) / 2, 0.9) for side, r in _HUES.items()}
    return [mid["left"] if k in left else mid["right"] if k in right else mid["centre"] for k in range(num_keypoints)]


def track_color(track_id: int) -> tuple[int, int, int]:
    """A stable, well-spread RGB colour for a track id (golden-ratio hue steps)."""
    return _hsv(0.61803398875 * int(track_id) + 0.1, 0.75, 1.0)


def format_score(score: float, score_max: float | None = None) -> str:
    """The instance score as drawn: ``0.87``; for a method whose scores exceed 1 (``score_max`` > 1, e.g. Poseur's
    box + mean + max keypoint score) with its range, ``1.16/3``, so nobody reads it as a probability."""
    text = f"{float(score):.2f}"
    return f"{text}/{score_max:g}" if score_max is not None and score_max > 1 else text


def person_sizes(result: PoseResult) -> np.ndarray:
    """(N,) size of each person in pixels: sqrt of the box area, or of the extent of its finite keypoints when the
    box is missing or empty (annotations drawn without boxes); 0 when neither exists."""
    b = np.nan_to_num(np.asarray(result.boxes, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    box_area = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    xy = np.asarray(result.keypoints, dtype=np.float64)[..., :2]
    finite = np.isfinite(xy).all(-1, keepdims=True)
    lo = np.where(finite, xy, np.inf).min(1)
    hi = np.where(finite, xy, -np.inf).max(1)
    ext = np.where(np.isfinite(hi - lo), hi - lo, 0.0)
    kp_area = ext[:, 0] * ext[:, 1]
    return np.sqrt(np.where(box_area > 0, box_area, kp_area))


def _clip_segment(p: np.ndarray, q: np.ndarray, lo: float, hi_x: float, hi_y: float):
    """Liang-Barsky: the part of segment p-q inside [lo, hi_x] x [lo, hi_y], or None."""
    d = q - p
    t0, t1 = 0.0, 1.0
    for delta, start, lower, upper in ((d[0], p[0], lo, hi_x), (d[1], p[1], lo, hi_y)):
        if delta == 0:
            if not lower <= start <= upper:
                return None
            continue
        ta, tb = (lower - start) / delta, (upper - start) / delta
        t0, t1 = max(t0, min(ta, tb)), min(t1, max(ta, tb))
        if t0 > t1:
            return None
    return p + t0 * d, p + t1 * d


def _fixed(xy) -> tuple[int, int]:
    return int(round(float(xy[0]) * _ONE)), int(round(float(xy[1]) * _ONE))


def _dashes(p: np.ndarray, q: np.ndarray, thickness: int) -> list[np.ndarray]:
    """Segments (2, 2) fixed-point int32 of a dashed line p-q of this width: dashes 2t + 2 long, gaps 2t + 4 (round
    caps and anti-aliasing eat about t + 2 of each gap), the first dash at p."""
    dash, gap = 2.0 * thickness + 2.0, 2.0 * thickness + 4.0
    length = float(np.hypot(*(q - p)))
    if length <= dash:
        return [(np.stack([p, q]) * _ONE).round().astype(np.int32)]
    starts = np.arange(0.0, length, dash + gap)[:, None] / length
    ends = np.minimum(starts + dash / length, 1.0)
    return list((np.stack([p + starts * (q - p), p + ends * (q - p)], 1) * _ONE).round().astype(np.int32))


class _Layers:
    """Faded primitives go into a layer blended at :data:`FADED_ALPHA` (OpenCV has no per-primitive alpha); solid
    ones are drawn afterwards, opaque, on top of the blend. Everything is clipped to the canvas plus a margin first,
    so points far outside (or at absurd coordinates) cannot overflow OpenCV's fixed-point arithmetic."""

    def __init__(self, img: np.ndarray):
        self.base = img
        self.faded = img.copy()
        self.mask = np.zeros(img.shape[:2], np.uint8)
        self.out: np.ndarray | None = None
        h, w = img.shape[:2]
        self.bounds = (-64.0, w + 64.0, h + 64.0)

    def _inside(self, c) -> bool:
        lo, hi_x, hi_y = self.bounds
        return lo <= c[0] <= hi_x and lo <= c[1] <= hi_y

    def faded_limb(self, p, q, color, thickness: int) -> None:
        seg = _clip_segment(np.asarray(p, float), np.asarray(q, float), *self.bounds)
        if seg is not None:
            dashes = _dashes(*seg, thickness)
            cv2.polylines(self.faded, dashes, False, color, thickness, cv2.LINE_AA, _SHIFT)
            cv2.polylines(self.mask, dashes, False, 255, thickness, cv2.LINE_AA, _SHIFT)

    def faded_dot(self, c, radius: float, color) -> None:
        if self._inside(c):
            ring = max(1, int(round(radius / 2.5)))
            cv2.circle(self.faded, _fixed(c), int(round(radius * _ONE)), color, ring, cv2.LINE_AA, _SHIFT)
            cv2.circle(self.mask, _fixed(c), int(round(radius * _ONE)), 255, ring, cv2.LINE_AA, _SHIFT)

    def blend(self) -> np.ndarray:
        """The picture with the faded layer blended in (only inside the faded primitives' bounding rectangle);
        solid primitives are drawn on this afterwards."""
        self.out = self.base.copy()
        x, y, w, h = cv2.boundingRect(self.mask)
        if w and h:
            roi = np.s_[y:y + h, x:x + w]
            a = self.mask[roi][..., None].astype(np.float32) * (FADED_ALPHA / 255.0)
            base = self.base[roi].astype(np.float32)
            self.out[roi] = (base + (self.faded[roi].astype(np.float32) - base) * a + 0.5).astype(np.uint8)
        return self.out

    def solid_limb(self, p, q, color, thickness: int) -> None:
        seg = _clip_segment(np.asarray(p, float), np.asarray(q, float), *self.bounds)
        if seg is not None:
            a, b = _fixed(seg[0]), _fixed(seg[1])
            cv2.line(self.out, a, b, _OUTLINE, thickness + 2, cv2.LINE_AA, _SHIFT)
            cv2.line(self.out, a, b, color, thickness, cv2.LINE_AA, _SHIFT)

    def solid_dot(self, c, radius: float, color) -> None:
        if self._inside(c):
            cv2.circle(self.out, _fixed(c), int(round((radius + 1) * _ONE)), _OUTLINE, -1, cv2.LINE_AA, _SHIFT)
            cv2.circle(self.out, _fixed(c), int(round(radius * _ONE)), color, -1, cv2.LINE_AA, _SHIFT)


def draw_poses(image: np.ndarray, result: PoseResult, skeleton: Sequence[tuple[int, int]] = (),
               left_ids: Sequence[int] = (), right_ids: Sequence[int] = (), *, kpt_threshold: float = 0.5,
               score_threshold: float = 0.0, show_boxes: bool = True, show_scores: bool = True,
               score_max: float | None = None, radius: float | None = None,
               thickness: int | None = None) -> np.ndarray:
    """Draw ``result`` on a copy of ``image`` (uint8 (H, W, 3), any channel order: colours are given as RGB).

    People scoring below ``score_threshold`` are left out; the best person is drawn last (on top). Keypoints with
    confidence >= ``kpt_threshold`` and limbs between two of them are solid, the others faded (hollow rings, dashed
    limbs); keypoints with non-finite coordinates are not drawn. ``radius`` / ``thickness`` fix the dot radius and
    line width (default: from each person's size). Scores are written with :func:`format_score` (``score_max``:
    the top of the method's score range when it exceeds 1). Track ids in ``result.extras["track_id"]`` colour the
    person's box and label."""
    img = np.ascontiguousarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"draw_poses: expected a uint8 (H, W, 3) image, got {img.dtype} {img.shape}")
    if not len(result):
        return img.copy()
    keep = np.nonzero(np.asarray(result.scores) >= score_threshold)[0]
    order = keep[np.argsort(result.scores[keep], kind="stable")]          # best person drawn last (on top)
    out = _draw_skeletons(img, result, order, skeleton, left_ids, right_ids, kpt_threshold, radius, thickness)
    tracks = result.extras.get("track_id")
    if show_boxes or show_scores or tracks is not None:
        _draw_labels(out, result, order, show_boxes, show_scores, score_max)
    return out


def _line_sizes(result: PoseResult, shape, radius: float | None, thickness: int | None):
    """Per person: dot radius 0.03 x size and line width 0.018 x size (size: :func:`person_sizes`), the radius at
    most 1/40 of the canvas' shorter side and the width at most half that; fixed values when given."""
    n = len(result)
    sizes = person_sizes(result)
    cap = max(1.0, min(shape[:2]) / 40.0)
    radii = np.clip(_RADIUS_PER_SIZE * sizes, 1.0, cap) if radius is None else np.full(n, float(radius))
    widths = np.clip(np.round(_THICKNESS_PER_SIZE * sizes), 1, max(1, round(cap / 2))) if thickness is None \
        else np.full(n, thickness)
    return radii, widths.astype(int)


def _draw_skeletons(img, result, order, skeleton, left_ids, right_ids, kpt_threshold, radius, thickness):
    """Keypoints and limbs of the people in ``order``: the faded ones of everybody first, the solid ones on top."""
    kpts = np.asarray(result.keypoints, dtype=np.float64)
    k = kpts.shape[1]
    drawable = np.isfinite(kpts[..., :2]).all(-1)
    solid = drawable & (np.nan_to_num(kpts[..., 2], nan=-np.inf) >= kpt_threshold)
    radii, widths = _line_sizes(result, img.shape, radius, thickness)
    kpt_rgb = keypoint_colors(k, left_ids, right_ids)
    limbs = [(a, b, c) for (a, b), c in zip(skeleton, limb_colors(skeleton, left_ids, right_ids)) if a < k and b < k]
    layers = _Layers(img)
    for solid_pass in (False, True):
        if solid_pass:
            layers.blend()
        draw_limb = layers.solid_limb if solid_pass else layers.faded_limb
        draw_dot = layers.solid_dot if solid_pass else layers.faded_dot
        for p in order:
            for a, b, color in limbs:
                if drawable[p, a] and drawable[p, b] and bool(solid[p, a] and solid[p, b]) == solid_pass:
                    draw_limb(kpts[p, a, :2], kpts[p, b, :2], color, int(widths[p]))
            for j in np.nonzero(drawable[p] & (solid[p] == solid_pass))[0]:
                draw_dot(kpts[p, j, :2], float(radii[p]), kpt_rgb[j])
    return layers.out


def _draw_labels(out, result, order, show_boxes: bool, show_scores: bool, score_max: float | None) -> None:
    """Boxes (white, or the track's colour) and labels ``#track score`` above them, kept inside the canvas."""
    h, w = out.shape[:2]
    tracks = result.extras.get("track_id")
    font_scale = float(np.clip(min(h, w) / 1000, 0.35, 1.2))
    for p in order:
        tid = int(tracks[p]) if tracks is not None and int(tracks[p]) >= 0 else None
        color = track_color(tid) if tid is not None else (255, 255, 255)
        box = np.asarray(result.boxes[p], dtype=np.float64)
        if not np.isfinite(box).all():
            continue
        x1, y1, x2, y2 = np.clip(box, -2.0, [w + 1, h + 1, w + 1, h + 1])
        if show_boxes:
            cv2.rectangle(out, _fixed((x1, y1)), _fixed((x2, y2)), color, 1, cv2.LINE_AA, _SHIFT)
        label = " ".join(s for s in (f"#{tid}" if tid is not None else "",
                                     format_score(result.scores[p], score_max) if show_scores else "") if s)
        if label:
            (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
            org = (int(np.clip(x1, 0, max(0, w - tw))), int(np.clip(y1 - 3, th + 2, h - 2)))
            cv2.putText(out, label, org, cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(out, label, org, cv2.FONT_HERSHEY_SIMPLEX, font_scale, color, 1, cv2.LINE_AA)
