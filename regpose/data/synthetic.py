"""Built-in synthetic crowd dataset (``regpose synth``): procedurally rendered people with COCO-17, CrowdPose-14 or
MPII-16 keypoints, or a declared layout of one's own (each of its keypoints placed at a rendered joint, e.g. a
5-keypoint "animal" of nose, ears and paws = wrists), in COCO json layout.

Each image: a textured background with distractor shapes (some limb- and head-like), then people drawn far to
near (an instance-id buffer gives mutual occlusion), then optional foreground occluders and camera effects.
A person is an articulated 2-D skeleton with human proportions and joint-angle limits, seen from the front or the
back with some yaw; limbs are tapered capsules, the torso a quad, the head an ellipse with eyes, nose, mouth and
hair. Left and right are told apart as in real people: by the face (front) or its absence (back), the direction
the head and feet turn, and which ear is hidden.

Annotations: keypoint visibility 2 (visible), 1 (covered by another person, an occluder or the own head) or 0
(outside the image, or face points of a person seen from behind); bbox and area from the rendered visible
silhouette (bbox grown to contain every visible keypoint), RLE segmentation, ``num_keypoints`` (CrowdPose: count
of v == 2, like the real files), ``crowdIndex`` for CrowdPose. Tiny background people are annotated without
keypoints (``num_keypoints`` 0, as COCO does) and, in COCO format, a distant group sometimes becomes one
``iscrowd`` region. Medium and large people dominate; people smaller than ~30 px are the unlabelled ones.

Every image has its own random generator seeded by (seed, index), so the same seed gives byte-identical files.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from ..progress import progress as progress_bar
from ..errors import DataError
from .keypoints import KeypointMeta, get_meta

__all__ = ["generate", "synth_info", "render_image", "GENERATOR_VERSION"]

GENERATOR_VERSION = 1
_SHIFT = 4                     # cv2 sub-pixel drawing: coordinates in 1/16 px
_S = float(1 << _SHIFT)
_OCCLUDER = 255

# Internal joints (a superset of every supported layout).
_J = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
      "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
      "right_ankle", "head_top", "neck", "pelvis", "thorax", "upper_neck"]
_JI = {n: i for i, n in enumerate(_J)}
_LAYOUT = {
    "coco": _J[:17],
    "crowdpose": ["left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
                  "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle", "head_top", "neck"],
    "mpii": ["right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle", "pelvis", "thorax",
             "upper_neck", "head_top", "right_wrist", "right_elbow", "right_shoulder", "left_shoulder", "left_elbow",
             "left_wrist"],
}
_SKIN = np.array([[255, 224, 196], [241, 194, 160], [224, 172, 128], [198, 134, 96], [160, 102, 66],
                  [120, 76, 50], [90, 56, 38]], np.float64)


def synth_info(num_images: int, seed: int, fmt: str, size, max_people: int, keypoints: KeypointMeta | None = None,
               joints: Sequence[str] = ()) -> dict:
    """The generator settings stored in ``annotations.json["info"]["regpose_synth"]`` (a declared layout adds its
    keypoint names and the rendered joints they sit at)."""
    info = {"version": GENERATOR_VERSION, "num_images": int(num_images), "seed": int(seed), "format": fmt,
            "size": [int(size[0]), int(size[1])], "max_people": int(max_people)}
    if keypoints is not None and keypoints.name != fmt:
        info.update(keypoints=list(keypoints.keypoint_names), joints=_joints(fmt, keypoints, joints))
    return info


def _joints(fmt: str, keypoints: KeypointMeta | None, joints: Sequence[str]) -> list[str]:
    """The rendered joint of each annotated keypoint: ``fmt``'s table for its own layout; for a declared layout
    ``joints`` (default: the keypoint names themselves), each one of the generator's joints."""
    if keypoints is None or keypoints.name == fmt:
        return list(_LAYOUT[fmt])
    out = list(joints) or list(keypoints.keypoint_names)
    if len(out) != keypoints.num_keypoints:
        raise DataError(f"synthetic.joints: expected one rendered joint per keypoint ({keypoints.num_keypoints}), "
                        f"got {len(out)}")
    bad = [j for j in out if j not in _JI]
    if bad:
        raise DataError(f"synthetic.joints: {bad[0]!r} is not a rendered joint (one of {', '.join(_J)}); map each "
                        f"keypoint of data.keypoints.names to one with data.<split>.synthetic.joints")
    return out


# ==========================================================================================================
# Drawing on a colour image and an instance-id buffer at once
# ==========================================================================================================
class _Canvas:
    def __init__(self, image: np.ndarray):
        self.img = image
        self.ids = np.zeros(image.shape[:2], np.uint8)

    @staticmethod
    def _p(pt) -> tuple[int, int]:
        return int(round(pt[0] * _S)), int(round(pt[1] * _S))

    def circle(self, c, r, color, pid=None):
        r = max(r, 0.5)
        ci, ri = self._p(c), int(round(r * _S))
        cv2.circle(self.img, ci, ri, color, -1, cv2.LINE_AA, _SHIFT)
        if pid is not None:
            cv2.circle(self.ids, ci, ri, pid, -1, cv2.LINE_8, _SHIFT)

    def poly(self, pts, color, pid=None):
        p = np.round(np.asarray(pts) * _S).astype(np.int32)
        cv2.fillConvexPoly(self.img, p, color, cv2.LINE_AA, _SHIFT)
        if pid is not None:
            cv2.fillConvexPoly(self.ids, p, pid, cv2.LINE_8, _SHIFT)

    def capsule(self, p0, r0, p1, r1, color, pid=None):
        p0, p1 = np.asarray(p0, np.float64), np.asarray(p1, np.float64)
        d = p1 - p0
        n = np.hypot(*d)
        if n > 1e-6:
            nv = np.array([-d[1], d[0]]) / n
            self.poly([p0 + nv * r0, p1 + nv * r1, p1 - nv * r1, p0 - nv * r0], color, pid)
        self.circle(p0, r0, color, pid)
        self.circle(p1, r1, color, pid)

    def ellipse(self, c, axes, angle, color, pid=None, start=0, end=360):
        ci = self._p(c)
        ax = (max(int(round(axes[0] * _S)), 1), max(int(round(axes[1] * _S)), 1))
        cv2.ellipse(self.img, ci, ax, angle, start, end, color, -1, cv2.LINE_AA, _SHIFT)
        if pid is not None:
            cv2.ellipse(self.ids, ci, ax, angle, start, end, pid, -1, cv2.LINE_8, _SHIFT)


def _col(c) -> tuple:
    return tuple(int(v) for v in np.clip(c, 0, 255))


def _hsv_color(rng, s=(0.3, 1.0), v=(0.25, 0.95)) -> np.ndarray:
    hsv = np.uint8([[[rng.integers(0, 180), rng.uniform(*s) * 255, rng.uniform(*v) * 255]]])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float64)


# ==========================================================================================================
# Background and distractors
# ==========================================================================================================
def _background(rng, w: int, h: int) -> np.ndarray:
    gh, gw = int(rng.integers(2, 6)), int(rng.integers(2, 6))
    gray = rng.uniform(40, 215)
    base = (gray + rng.uniform(0.2, 0.7) * (rng.uniform(20, 235, (gh, gw, 3)) - gray)).astype(np.float32)
    img = cv2.resize(base, (w, h), interpolation=cv2.INTER_CUBIC)
    kind = rng.integers(4)
    if kind == 0:      # stripes
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        a = rng.uniform(0, np.pi)
        f = rng.uniform(0.05, 0.5)
        wave = np.sin((xx * np.cos(a) + yy * np.sin(a)) * f)[..., None]
        img += wave * rng.uniform(10, 45, 3).astype(np.float32)
    elif kind == 1:    # tiles
        t = int(rng.integers(8, 40))
        yy, xx = np.mgrid[0:h, 0:w]
        chk = (((xx // t) + (yy // t)) % 2).astype(np.float32)[..., None]
        img += (chk - 0.5) * rng.uniform(10, 50, 3).astype(np.float32)
    elif kind == 2:    # blotchy noise
        n = rng.uniform(-1, 1, (h // 8 + 1, w // 8 + 1, 3)).astype(np.float32)
        img += cv2.resize(n, (w, h), interpolation=cv2.INTER_LINEAR) * rng.uniform(10, 40)
    if rng.random() < 0.5:  # ground plane
        y0 = int(rng.uniform(0.3, 0.8) * h)
        img[y0:] = img[y0:] * 0.5 + rng.uniform(30, 200, 3).astype(np.float32) * 0.5
    return np.clip(img, 0, 255).astype(np.uint8)


def _distractors(rng, cv: _Canvas, w: int, h: int, n: int, pid=None):
    for _ in range(n):
        c = _col(_hsv_color(rng) if rng.random() < 0.7 else _SKIN[rng.integers(len(_SKIN))])
        kind = rng.integers(5)
        x, y = rng.uniform(-0.1, 1.1) * w, rng.uniform(-0.1, 1.1) * h
        s = rng.uniform(0.04, 0.3) * min(w, h)
        if kind == 0:
            cv.ellipse((x, y), (s, s * rng.uniform(0.3, 1.0)), rng.uniform(0, 180), c, pid)
        elif kind == 1:
            a = rng.uniform(0, np.pi)
            d = np.array([np.cos(a), np.sin(a)]) * s
            cv.capsule((x, y), s * rng.uniform(0.08, 0.2), (x + d[0], y + d[1]), s * rng.uniform(0.06, 0.2), c, pid)
        elif kind == 2:
            pts = np.array([x, y]) + rng.uniform(-s, s, (int(rng.integers(3, 6)), 2))
            hull = cv2.convexHull(pts.astype(np.float32)).reshape(-1, 2)
            cv.poly(hull, c, pid)
        elif kind == 3:
            cv.circle((x, y), s * rng.uniform(0.15, 0.4), c, pid)
        else:
            cv.poly([(x, y), (x + s, y), (x + s, y + s * rng.uniform(0.3, 2)), (x, y + s * rng.uniform(0.3, 2))],
                    c, pid)


def _occluders(rng, cv: _Canvas, w: int, h: int):
    for _ in range(int(rng.integers(1, 3))):
        c = _col(_hsv_color(rng, v=(0.2, 0.8)))
        if rng.random() < 0.5:   # pole / pillar
            x = rng.uniform(0, w)
            bw = rng.uniform(0.02, 0.08) * w
            y0 = rng.uniform(-0.2, 0.5) * h
            cv.poly([(x, y0), (x + bw, y0), (x + bw, h + 5), (x, h + 5)], c, _OCCLUDER)
        else:                    # box / bush at the bottom
            x = rng.uniform(-0.1, 0.9) * w
            bw, bh = rng.uniform(0.1, 0.35) * w, rng.uniform(0.08, 0.25) * h
            if rng.random() < 0.5:
                cv.poly([(x, h - bh), (x + bw, h - bh), (x + bw, h + 5), (x, h + 5)], c, _OCCLUDER)
            else:
                cv.ellipse((x + bw / 2, h), (bw / 2, bh), 0, c, _OCCLUDER)


# ==========================================================================================================
# People
# ==========================================================================================================
def _dir(a_deg: float) -> np.ndarray:
    """Unit vector at angle a (degrees) from "up" (image y points down), clockwise positive."""
    a = math.radians(a_deg)
    return np.array([math.sin(a), -math.cos(a)])


class _Person:
    """An articulated figure in body units (height ~ 1), posed at random within joint limits."""

    def __init__(self, rng, height: float, center, rotation: float):
        self.h = height
        self.center = np.asarray(center, np.float64)
        self.rot = rotation
        self.front = rng.random() < 0.75
        self.yaw = float(np.clip(rng.normal(0, 25), -65, 65))
        self.lr = 1.0 if self.front else -1.0          # image side (+x) of the person's left
        sy = math.sin(math.radians(self.yaw))
        self.sy = sy
        wf = max(math.cos(math.radians(self.yaw)), 0.45)
        lean = float(rng.normal(0, 7))
        tilt = float(rng.normal(0, 10)) + 10 * sy
        j = {}
        p = np.zeros(2)
        u = _dir(lean)
        r = np.array([-u[1], u[0]])
        j["pelvis"] = p
        t = p + 0.30 * u
        j["thorax"] = t
        hu = _dir(lean + tilt)
        j["upper_neck"] = t + 0.055 * hu
        hc = j["upper_neck"] + 0.068 * hu
        self.head_c, self.head_u = hc, hu
        self.head_ax = (0.052 * max(wf, 0.75), 0.068)
        j["head_top"] = hc + 0.068 * hu
        j["neck"] = 0.5 * (t + j["upper_neck"])
        hr = np.array([-hu[1], hu[0]])
        hw, hh = self.head_ax
        if self.front:
            j["nose"] = hc + hr * (0.55 * hw * sy) - hu * (0.12 * hh)
            for side, name in ((1.0, "left_eye"), (-1.0, "right_eye")):
                j[name] = hc + hr * (0.5 * hw * sy + side * self.lr * 0.38 * hw * math.cos(math.radians(self.yaw))) \
                    + hu * (0.12 * hh)
        else:
            j["nose"] = hc - hr * (0.5 * hw * sy) - hu * (0.12 * hh)
            j["left_eye"] = hc + hr * (self.lr * 0.3 * hw) + hu * 0.12 * hh
            j["right_eye"] = hc - hr * (self.lr * 0.3 * hw) + hu * 0.12 * hh
        for side, name in ((1.0, "left_ear"), (-1.0, "right_ear")):
            ex = side * self.lr * 0.95 * hw * math.cos(math.radians(self.yaw)) + (-0.35 if self.front else 0.35) * hw * sy
            j[name] = hc + hr * ex
        self.limb_r = {}
        sw = 0.115 * wf
        hipw = 0.078 * max(wf, 0.6)
        leg_base = 180 + 0.4 * lean
        for side, pre in ((self.lr, "left"), (-self.lr, "right")):
            sh = t - 0.015 * u + side * sw * r
            j[f"{pre}_shoulder"] = sh
            abd = float(rng.uniform(-10, 165)) if rng.random() < 0.85 else float(rng.uniform(-30, 10))
            ua = lean + 180 - side * abd
            el = sh + 0.165 * rng.uniform(0.7, 1.0) * _dir(ua)
            bend = float(rng.uniform(0, 145)) * (1 if rng.random() < 0.7 else -1)
            fa = ua - side * bend
            wr = el + 0.15 * rng.uniform(0.7, 1.0) * _dir(fa)
            j[f"{pre}_elbow"], j[f"{pre}_wrist"] = el, wr
            j[f"_{pre}_hand"] = wr + 0.045 * _dir(fa + rng.normal(0, 15))
            hp = p + side * hipw * r
            j[f"{pre}_hip"] = hp
            habd = float(rng.uniform(-8, 40)) if rng.random() < 0.85 else float(rng.uniform(40, 95))
            ta = leg_base - side * habd
            kn = hp + 0.245 * rng.uniform(0.75, 1.0) * _dir(ta)
            kb = float(rng.uniform(0, 100)) * (1 if rng.random() < 0.5 else -1)
            sa = ta + side * kb * 0.6
            an = kn + 0.235 * rng.uniform(0.75, 1.0) * _dir(sa)
            j[f"{pre}_knee"], j[f"{pre}_ankle"] = kn, an
            # Feet point where the person faces: outwards-forwards from the front, hidden heels from the back.
            fdir = np.array([0.045 * sy + side * 0.012, 0.03 if self.front else 0.012])
            j[f"_{pre}_foot"] = an + fdir
        # Body units -> pixels: scale, rotate about the pelvis, move to the centre.
        c, s = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
        self.R = np.array([[c, -s], [s, c]])
        self.j = {k: self.px(v) for k, v in j.items()}
        self.head_c = self.px(self.head_c)
        self.head_angle = math.degrees(math.atan2(hu[0], -hu[1])) + rotation
        # Appearance.
        self.skin = _SKIN[rng.integers(len(_SKIN))] * rng.uniform(0.9, 1.05)
        self.shirt = _hsv_color(rng)
        self.pants = _hsv_color(rng, v=(0.15, 0.7))
        self.hair = _hsv_color(rng, s=(0.2, 0.8), v=(0.05, 0.45))
        self.shoes = _hsv_color(rng, v=(0.05, 0.4))
        self.long_sleeves = rng.random() < 0.5
        self.shorts = rng.random() < 0.3
        self.shade = rng.uniform(0.85, 1.1, 8)

    def px(self, v) -> np.ndarray:
        return self.center + self.R @ (np.asarray(v) * self.h)

    def draw(self, cv: _Canvas, pid):
        j, h = self.j, self.h
        lr = self.lr
        far = "right" if (lr * self.sy) > 0 else "left"  # the side turned away from the camera is drawn first
        near = "left" if far == "right" else "right"

        def leg(pre, k):
            pants = _col(self.pants * self.shade[k])
            lower = _col((self.skin if self.shorts else self.pants * 0.92) * self.shade[k + 1])
            cv.capsule(j[f"{pre}_hip"], 0.052 * h, j[f"{pre}_knee"], 0.04 * h, pants, pid)
            cv.capsule(j[f"{pre}_knee"], 0.038 * h, j[f"{pre}_ankle"], 0.027 * h, lower, pid)
            cv.capsule(j[f"{pre}_ankle"], 0.025 * h, j[f"_{pre}_foot"], 0.02 * h, _col(self.shoes), pid)

        def arm(pre, k):
            upper = _col(self.shirt * self.shade[k])
            fore = _col((self.shirt * 0.9 if self.long_sleeves else self.skin) * self.shade[k + 1])
            cv.capsule(j[f"{pre}_shoulder"], 0.034 * h, j[f"{pre}_elbow"], 0.027 * h, upper, pid)
            cv.capsule(j[f"{pre}_elbow"], 0.026 * h, j[f"{pre}_wrist"], 0.02 * h, fore, pid)
            cv.capsule(j[f"{pre}_wrist"], 0.02 * h, j[f"_{pre}_hand"], 0.018 * h, _col(self.skin * 0.95), pid)

        leg(far, 0)
        arm(far, 2) if abs(self.sy) > 0.35 else None
        leg(near, 4)
        # Torso: shoulders to hips, a little wider than the joints; shirt, with a collar on the front.
        ls, rs, lh, rh = j["left_shoulder"], j["right_shoulder"], j["left_hip"], j["right_hip"]
        sdir = (ls - rs) / max(np.hypot(*(ls - rs)), 1e-6)
        hdir = (lh - rh) / max(np.hypot(*(lh - rh)), 1e-6)
        quad = [ls + sdir * 0.03 * h, rs - sdir * 0.03 * h, rh - hdir * 0.035 * h, lh + hdir * 0.035 * h]
        cv.poly(cv2.convexHull(np.float32(quad)).reshape(-1, 2), _col(self.shirt * self.shade[6]), pid)
        cv.capsule(lh, 0.05 * h, rh, 0.05 * h, _col(self.pants * 0.95), pid)
        cv.capsule(j["thorax"], 0.028 * h, j["upper_neck"], 0.024 * h, _col(self.skin * 0.93), pid)
        if self.front:
            cv.circle(j["thorax"] + (j["pelvis"] - j["thorax"]) * 0.12, 0.022 * h, _col(self.shirt * 0.6))
        if abs(self.sy) <= 0.35:
            arm(far, 2)
        arm(near, 4 + 1)
        # Head: skin ellipse, hair, face marks (front) or full hair (back).
        hw, hh = self.head_ax[0] * h, self.head_ax[1] * h
        ang = self.head_angle + 90
        for ear in ("left_ear", "right_ear"):
            cv.circle(j[ear], 0.014 * h, _col(self.skin * 0.9), pid)
        cv.ellipse(self.head_c, (hh, hw), ang, _col(self.skin), pid)
        if self.front:
            cv.ellipse(self.head_c, (hh * 1.02, hw * 1.04), ang, _col(self.hair), None, 180 - 60, 180 + 60)
            eye = _col(np.array([25, 20, 20]))
            cv.circle(j["left_eye"], max(0.0085 * h, 0.6), eye)
            cv.circle(j["right_eye"], max(0.0085 * h, 0.6), eye)
            cv.circle(j["nose"], max(0.008 * h, 0.5), _col(self.skin * 0.7))
            mouth = j["nose"] + (j["nose"] - j["head_top"]) / max(np.hypot(*(j["nose"] - j["head_top"])), 1e-6) \
                * 0.022 * h
            cv.circle(mouth, max(0.007 * h, 0.5), _col(np.array([150, 60, 60])))
        else:
            cv.ellipse(self.head_c, (hh * 1.02, hw * 1.04), ang, _col(self.hair), pid)

    def self_occlusion(self) -> dict:
        """Visibility the own head imposes: 1 (occluded) or 0 (not annotatable) for face points."""
        out = {}
        if self.front:
            far_side = "right" if self.lr * self.sy > 0 else "left"
            if abs(self.yaw) > 30:
                out[f"{far_side}_ear"] = 1
            if abs(self.yaw) > 50:
                out[f"{far_side}_eye"] = 1
        else:
            out.update({"nose": 0, "left_eye": 0, "right_eye": 0})
        return out

    def keypoints(self) -> np.ndarray:
        return np.stack([self.j[n] for n in _J[:22]])


def _place(rng, w, h, height, boxes, tries=8):
    """Pelvis position for a person of ``height`` px: mostly fully inside, sometimes truncated; avoids extreme
    overlap with already placed people (box IoU > 0.4) when it can."""
    best = None
    for _ in range(tries):
        if rng.random() < 0.18:
            x = rng.uniform(-0.05, 1.05) * w
            y = rng.uniform(0.2 * height, h + 0.1 * height)
        else:
            x = rng.uniform(0.12 * height, max(w - 0.12 * height, 0.12 * height + 1))
            y = rng.uniform(0.52 * height, max(h - 0.46 * height, 0.52 * height + 1))
        box = np.array([x - 0.25 * height, y - 0.52 * height, x + 0.25 * height, y + 0.48 * height])
        ious = [_iou(box, b) for b in boxes]
        best = (x, y, box)
        if not ious or max(ious) < 0.4:
            break
    return best


def _iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter + 1e-9)


def _rotation(rng) -> float:
    u = rng.random()
    if u < 0.85:
        return float(np.clip(rng.normal(0, 7), -20, 20))
    if u < 0.97:
        return float(rng.uniform(-60, 60))
    return float(rng.choice([-1, 1]) * rng.uniform(60, 100))


# ==========================================================================================================
# One image
# ==========================================================================================================
def render_image(rng: np.random.Generator, size=(256, 256), max_people: int = 6, fmt: str = "coco",
                 joints: Sequence[str] | None = None):
    """Render one image: returns (RGB uint8 image, list of annotation dicts without ids). ``joints``: the rendered
    joint of each annotated keypoint (None: ``fmt``'s layout)."""
    from pycocotools import mask as mask_utils

    w, h = int(size[0]), int(size[1])
    img = _background(rng, w, h)
    cv = _Canvas(img)
    _distractors(rng, cv, w, h, int(rng.integers(2, 8)))
    # Labelled people: medium and large dominate; some small; a few very large and truncated.
    n = min(1 + int(max_people * rng.random() ** 1.5), max_people)      # skewed to fewer people (mean ~3 of 6)
    people, boxes = [], []
    for _ in range(n):
        u = rng.random()
        frac = rng.uniform(0.45, 0.95) if u < 0.76 else (rng.uniform(0.28, 0.45) if u < 0.94 else rng.uniform(0.95, 1.2))
        height = frac * h
        x, y, box = _place(rng, w, h, height, boxes)
        boxes.append(box)
        people.append(("person", _Person(rng, height, (x, y), _rotation(rng))))
    # Unlabelled tiny people far away, and (COCO) sometimes a distant crowd region.
    for _ in range(int(rng.integers(0, 3)) if rng.random() < 0.35 else 0):
        height = rng.uniform(0.05, 0.11) * h
        people.append(("tiny", _Person(rng, height, (rng.uniform(0, w), rng.uniform(0.1, 0.6) * h), _rotation(rng))))
    crowd_group = []
    if fmt == "coco" and rng.random() < 0.06:
        cx, cy = rng.uniform(0.15, 0.85) * w, rng.uniform(0.1, 0.4) * h
        for _ in range(int(rng.integers(6, 14))):
            height = rng.uniform(0.04, 0.09) * h
            crowd_group.append(_Person(rng, height, (cx + rng.normal(0, 0.08 * w), cy + rng.normal(0, 0.03 * h)),
                                       float(rng.normal(0, 5))))
    # Far to near: by the feet's image row, with some shuffling.
    depth = [p.center[1] + 0.48 * p.h + rng.normal(0, 0.08 * p.h) for _, p in people]
    order = np.argsort(depth, kind="stable")
    crowd_id = len(people) + 1
    for p in crowd_group:
        p.draw(cv, crowd_id)
    for rank, i in enumerate(order):
        people[i][1].draw(cv, int(i) + 1)
    if rng.random() < 0.35:
        _occluders(rng, cv, w, h)
    # Camera: blur, noise, global colour.
    out = cv.img
    if rng.random() < 0.3:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.4, 0.9))
    if rng.random() < 0.5:
        out = cv2.convertScaleAbs(out, alpha=rng.uniform(0.85, 1.15), beta=rng.uniform(-15, 15))
    if rng.random() < 0.4:
        noise = rng.normal(0, rng.uniform(2, 6), out.shape).astype(np.float32)
        out = np.clip(out.astype(np.float32) + noise, 0, 255).astype(np.uint8)

    layout = [_JI[n] for n in (_LAYOUT[fmt] if joints is None else joints)]
    anns = []
    for i, (kind, p) in enumerate(people):
        m = cv.ids == (i + 1)
        area = int(m.sum())
        if area == 0:
            continue
        kp = np.round(p.keypoints()[layout], 2)
        inside = (kp[:, 0] >= 0) & (kp[:, 0] <= w - 1) & (kp[:, 1] >= 0) & (kp[:, 1] <= h - 1)
        xi = np.clip(np.floor(kp[:, 0]).astype(int), 0, w - 1)
        yi = np.clip(np.floor(kp[:, 1]).astype(int), 0, h - 1)
        v = np.where(cv.ids[yi, xi] == i + 1, 2, 1)
        so = p.self_occlusion()
        for li, ji in enumerate(layout):
            name = _J[ji]
            if name in so:
                v[li] = min(v[li], so[name]) if so[name] > 0 else 0
        v = np.where(inside, v, 0)
        if kind == "tiny":
            v[:] = 0
        kp = np.where(v[:, None] > 0, kp, 0.0)
        ann = _annotation(m, kp, v, area, False, fmt, mask_utils)
        r = max(p.head_ax) * p.h
        ann["_head"] = [round(float(p.head_c[0] - r), 2), round(float(p.head_c[1] - r), 2),
                        round(float(p.head_c[0] + r), 2), round(float(p.head_c[1] + r), 2)]
        anns.append(ann)
    if crowd_group:
        m = cv.ids == crowd_id
        if m.any():
            anns.append(_annotation(m, np.zeros((len(layout), 2)), np.zeros(len(layout), int), int(m.sum()), True,
                                    fmt, mask_utils))
    return out, anns


def _annotation(mask, kp, v, area, crowd, fmt, mask_utils) -> dict:
    ys = np.nonzero(mask.any(1))[0]
    xs = np.nonzero(mask.any(0))[0]
    x0, x1, y0, y1 = float(xs[0]), float(xs[-1] + 1), float(ys[0]), float(ys[-1] + 1)
    lab = v == 2
    if lab.any():  # visible keypoints always inside the box
        x0, y0 = min(x0, float(kp[lab, 0].min())), min(y0, float(kp[lab, 1].min()))
        x1, y1 = max(x1, float(kp[lab, 0].max())), max(y1, float(kp[lab, 1].max()))
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    kps = np.concatenate([kp, v[:, None]], 1).reshape(-1)
    return {
        "iscrowd": int(crowd),
        "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
        "area": int(area),
        "segmentation": {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": rle["counts"].decode("ascii")},
        "keypoints": [round(float(t), 2) if i % 3 != 2 else int(t) for i, t in enumerate(kps)],
        "num_keypoints": int(np.count_nonzero(v == 2) if fmt == "crowdpose" else np.count_nonzero(v > 0)),
        "category_id": 1,
    }


def _crowd_index(anns: list) -> float:
    """CrowdPose crowd index: mean over labelled people of (others' labelled keypoints inside its box) / (its own)."""
    people = [a for a in anns if not a["iscrowd"] and a["num_keypoints"] > 0]
    if len(people) < 2:
        return 0.0
    kps = [np.asarray(a["keypoints"], np.float64).reshape(-1, 3) for a in people]
    vals = []
    for i, a in enumerate(people):
        x, y, bw, bh = a["bbox"]
        own = np.count_nonzero(kps[i][:, 2] > 0)
        other = 0
        for j, k in enumerate(kps):
            if j != i:
                lab = k[:, 2] > 0
                other += np.count_nonzero(lab & (k[:, 0] >= x) & (k[:, 0] <= x + bw) & (k[:, 1] >= y)
                                          & (k[:, 1] <= y + bh))
        vals.append(other / max(own, 1))
    return float(np.mean(vals))


# ==========================================================================================================
# Dataset
# ==========================================================================================================
def _categories(meta: KeypointMeta) -> list:
    return [{"id": 1, "name": "person", "supercategory": "person", "keypoints": list(meta.keypoint_names),
             "skeleton": [[a + 1, b + 1] for a, b in meta.skeleton]}]


def _render_one(args):
    seed, index, fmt, size, max_people, image_format, out_dir, joints = args
    rng = np.random.default_rng([int(seed), int(index)])
    img, anns = render_image(rng, size, max_people, fmt, joints)
    name = f"{index + 1:06d}.{image_format}"
    params = [cv2.IMWRITE_JPEG_QUALITY, 92] if image_format == "jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    ok, buf = cv2.imencode("." + image_format, cv2.cvtColor(img, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise RuntimeError(f"cannot encode synthetic image {name}")
    (Path(out_dir) / "images" / name).write_bytes(buf.tobytes())
    return name, anns


def _write_mpii(out: Path, results: list) -> Path:
    """MPII json layout (mmpose): one entry per labelled person, 1-based pixels, centre / scale from the box
    (scale = box height / 200), the head box for the official PCKh normaliser."""
    people = []
    for name, anns in results:
        for a in anns:
            if a["iscrowd"] or a["num_keypoints"] == 0:
                continue
            k = np.asarray(a["keypoints"], np.float64).reshape(-1, 3)
            vis = k[:, 2] > 0
            joints = np.where(vis[:, None], k[:, :2] + 1.0, -1.0)
            x, y, bw, bh = a["bbox"]
            people.append({"image": name, "joints": np.round(joints, 2).tolist(),
                           "joints_vis": vis.astype(int).tolist(),
                           "center": [round(x + bw / 2 + 1.0, 2), round(y + bh / 2 + 1.0, 2)],
                           "scale": round(max(bh, bw) / 200.0, 4),
                           "headbox": [round(v + 1.0, 2) for v in a["_head"]]})
    path = out / "annotations.json"
    tmp = out / "annotations.json.tmp"
    tmp.write_text(json.dumps(people, separators=(",", ":")))
    os.replace(tmp, path)
    return path


def generate(out_dir: str | os.PathLike, num_images: int, seed: int = 0, fmt: str = "coco", size=(256, 256),
             max_people: int = 6, progress: bool = True, image_format: str = "jpg", workers: int = 0,
             desc: str | None = None, keypoints: KeypointMeta | None = None, joints: Sequence[str] = ()) -> Path:
    """Write ``out_dir/images/*.jpg`` and ``out_dir/annotations.json`` (COCO layout in the ``fmt`` keypoint order:
    "coco", "crowdpose" or "mpii"); returns the annotations path. ``size`` is (width, height). ``workers`` > 0
    renders in that many processes (same bytes as serial). ``keypoints``: a declared layout to annotate instead of
    ``fmt``'s, each keypoint at the rendered joint ``joints`` names (default: the joint of the same name)."""
    if fmt not in _LAYOUT:
        raise DataError(f"synthetic format must be one of {', '.join(_LAYOUT)}, got {fmt!r}")
    if num_images < 1:
        raise DataError(f"--num-images must be >= 1, got {num_images}")
    if max_people < 1:
        raise DataError(f"--max-people must be >= 1, got {max_people}")
    w, h = int(size[0]), int(size[1])
    if w < 32 or h < 32:
        raise DataError(f"synthetic image size must be at least 32x32, got {w}x{h}")
    if image_format not in ("jpg", "png"):
        raise DataError(f"image format must be jpg or png, got {image_format!r}")
    if keypoints is not None and keypoints.name != fmt and fmt == "mpii":
        raise DataError("synthetic: a declared keypoint layout is written as COCO json (format coco or crowdpose)")
    rendered = _joints(fmt, keypoints, joints)
    meta = get_meta(fmt) if keypoints is None else keypoints
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    jobs = [(seed, i, fmt, (w, h), max_people, image_format, str(out), rendered) for i in range(num_images)]
    bar = progress_bar(total=num_images, desc=desc or f"synth {out.name}", unit="img", disable=not progress)
    if workers and workers > 1:
        import multiprocessing as mp
        with mp.get_context("spawn").Pool(workers) as pool:
            results = []
            for r in pool.imap(_render_one, jobs, chunksize=16):
                results.append(r)
                bar.update(1)
    else:
        results = []
        for job in jobs:
            results.append(_render_one(job))
            bar.update(1)
    bar.close()
    if fmt == "mpii":
        return _write_mpii(out, results)
    images, annotations = [], []
    aid = 1
    for i, (name, anns) in enumerate(results):
        im = {"id": i + 1, "file_name": name, "width": w, "height": h}
        if fmt == "crowdpose":
            im["crowdIndex"] = round(_crowd_index(anns), 2)
        images.append(im)
        for a in anns:
            annotations.append({"id": aid, "image_id": i + 1, **{k: v for k, v in a.items() if k != "_head"}})
            aid += 1
    data = {
        "info": {"description": "regpose synthetic crowd dataset",
                 "regpose_synth": synth_info(num_images, seed, fmt, (w, h), max_people, keypoints, joints)},
        "licenses": [],
        "categories": _categories(meta),
        "images": images,
        "annotations": annotations,
    }
    path = out / "annotations.json"
    tmp = out / "annotations.json.tmp"
    tmp.write_text(json.dumps(data, separators=(",", ":")))
    os.replace(tmp, path)
    return path
