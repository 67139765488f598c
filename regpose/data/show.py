"""Render augmented training samples (``regpose show-data``, :mod:`regpose.cli.show_data`) as the network sees them, with their keypoints and
skeleton and every heatmap-like target overlaid, so a person can check augmentation and target encoding.

The keypoints drawn are the raw annotations mapped through the sample's own ``meta["inverse"]`` (inverted), so
the picture also checks the method's inverse affine: a keypoint off its joint means the inverse is wrong. After a
mirror (negative determinant) labels are swapped through the flip map, so left limbs (greens) must lie on the
person's left in the rendered image just as in the original.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from ..drawing import draw_poses
from ..errors import DataError
from ..structures import PoseResult
from .keypoints import KeypointMeta
from .transforms import apply_affine

__all__ = ["render_samples", "draw_keypoints", "render_sample"]

def draw_keypoints(image: np.ndarray, keypoints: np.ndarray, meta: KeypointMeta,
                   highlight: int | None = None) -> np.ndarray:
    """Draw annotated people (N, K, 3: x, y, visibility) on an RGB uint8 image with the shared renderer
    (:func:`regpose.drawing.draw_poses`, the same colours as predictions): visible keypoints solid, occluded ones
    (v = 1) faded with dashed limbs, unlabelled ones (v = 0) not at all. When ``highlight`` names a person (the
    person a top-down crop is about), everyone else is drawn faded."""

    kps = np.array(keypoints, dtype=np.float64).reshape(-1, meta.num_keypoints, 3)
    v = kps[..., 2]
    kps[v <= 0, :2] = np.nan
    focus = np.ones(len(kps), bool) if highlight is None or not 0 <= highlight < len(kps) else \
        np.arange(len(kps)) == highlight
    kps[..., 2] = ((v >= 2) & focus[:, None]).astype(np.float64)
    people = PoseResult(np.zeros((len(kps), 4)), kps, focus.astype(np.float32))
    return draw_poses(image, people, meta.skeleton, meta.left_ids, meta.right_ids, kpt_threshold=0.5,
                      show_boxes=False, show_scores=False)


def _heat_panel(t: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    t = np.nan_to_num(t.astype(np.float32))
    m = t.max(0) if t.ndim == 3 else t
    lo, hi = float(m.min()), float(m.max())
    m = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
    m = cv2.resize(m, size, interpolation=cv2.INTER_NEAREST)
    return cv2.cvtColor(cv2.applyColorMap((m * 255).astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def _to_numpy(v):
    try:
        import torch
        if isinstance(v, torch.Tensor):
            return v.detach().cpu().float().numpy()
    except ImportError:  # pragma: no cover
        pass
    return np.asarray(v) if isinstance(v, np.ndarray) else None


def _display(tensor) -> np.ndarray:
    """A network input (3, H, W), normalised per channel by any positive scale and shift (ImageNet mean / std,
    detectron2 pixel mean / std ...), back to uint8 RGB by stretching each channel to 0..255."""
    a = _to_numpy(tensor).astype(np.float64)
    lo = a.min(axis=(1, 2), keepdims=True)
    hi = a.max(axis=(1, 2), keepdims=True)
    a = (a - lo) / np.where(hi > lo, hi - lo, 1.0)
    return np.ascontiguousarray((a * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0))


def render_sample(sample: dict, raw_keypoints: np.ndarray, meta: KeypointMeta, person_index: int = -1,
                  max_panels: int = 4, min_side: int = 200) -> np.ndarray:
    """One picture of a transformed sample: the input image with the raw keypoints mapped in, followed by panels
    of the heatmap-like targets (tensors (C, h, w) or masks (h, w), max over channels, resized to the input).

    Inputs whose shorter side is below ``min_side`` (top-down crops such as 72x96) are enlarged by a whole factor,
    pixels repeated (nearest neighbour: still exactly what the network sees), so the skeleton drawn over them is
    legible; the keypoints are mapped into the enlarged pixels."""

    img = sample["image"]
    if not isinstance(img, np.ndarray):
        img = _display(img)
    factor = max(1, -(-min_side // min(img.shape[:2])))
    if factor > 1:
        img = cv2.resize(img, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST)
    h, w = img.shape[:2]
    inv = np.eye(3)
    inv[:2] = np.asarray(sample["meta"]["inverse"], dtype=np.float64)
    # original pixels -> input pixels -> enlarged pixels (pixel centres: x' = (x + 0.5) f - 0.5)
    fwd = np.array([[factor, 0, (factor - 1) / 2], [0, factor, (factor - 1) / 2], [0, 0, 1]]) @ np.linalg.inv(inv)
    kp = np.asarray(raw_keypoints, dtype=np.float64).copy()
    kp[..., :2] = apply_affine(kp[..., :2], fwd)
    if np.linalg.det(fwd[:2, :2]) < 0:            # mirrored: the point that was left is now labelled right
        kp = kp[:, meta.flip_index]
    panels = [draw_keypoints(img, kp, meta, highlight=person_index)]
    for name, v in (sample.get("target") or {}).items():
        a = _to_numpy(v)
        if a is None or a.ndim not in (2, 3) or min(a.shape[-2:]) < 4 or a.dtype.kind not in "fiub":
            continue
        p = _heat_panel(a, (w, h))
        cv2.putText(p, str(name)[:24], (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
        panels.append(p)
        if len(panels) > max_panels:
            break
    return np.concatenate(panels, axis=1)


def render_samples(dataset, transform: Callable, meta: KeypointMeta, out_dir, num_samples: int = 8, seed: int = 0,
                   source: str = "the transform") -> list[Path]:
    """Render ``num_samples`` raw samples of ``dataset``, picked by ``seed``, through ``transform`` (a method's
    augmentation and target encoding) into ``out_dir/sample_XX_<image_id>.png``; returns the paths. ``source``
    names the transform in errors. The same seed gives the same pictures (the transforms draw from Python's and
    numpy's global generators, seeded per sample)."""
    if len(dataset) == 0:
        raise DataError(f"{source}: the dataset is empty")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(dataset), size=min(num_samples, len(dataset)), replace=False)
    paths = []
    for j, i in enumerate(picks):
        raw = dataset[int(i)]
        raw_kp = np.array(raw["keypoints"], dtype=np.float64)
        person = int(raw.get("person_index", -1))
        random.seed(seed * 100003 + j)     # the transforms draw their generator from Python's random
        np.random.seed((seed * 100003 + j) % (2 ** 32))
        sample = transform(raw)
        if "meta" not in sample or "inverse" not in sample["meta"]:
            raise DataError(f"{source}: the transform returned no meta['inverse'] (see regpose.models.base)")
        pic = render_sample(sample, raw_kp, meta, person)
        path = out / f"sample_{j:02d}_{int(sample['meta']['image_id'])}.png"
        cv2.imwrite(str(path), cv2.cvtColor(pic, cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths
