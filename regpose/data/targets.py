"""What the methods learn, made from transformed keypoints (numpy, vectorised; run in data-loader workers).

  * :func:`gaussian_heatmaps` — unnormalised Gaussians of several people, max-combined (generic; centre heatmaps);
  * :func:`udp_heatmaps` — mmpose's unbiased (UDP) keypoint heatmaps with per-keypoint weights (TFPose and
    DirectPose auxiliary branches);
  * :func:`dekr_joints`, :func:`dekr_heatmaps`, :func:`dekr_offsets` — DEKR's targets exactly as the official code
    (reference/dekr/spec.md §2.1–2.4, incl. its quirks);

The coordinate targets of the regression methods are encoded by their codecs (:mod:`regpose.codecs`).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["gaussian_heatmaps", "udp_heatmaps", "dekr_joints", "dekr_heatmaps", "dekr_offsets"]


def _wh(size) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    return int(size[0]), int(size[1])


def gaussian_heatmaps(points: np.ndarray, size, sigma: float | Sequence[float], radius: float | None = None
                      ) -> np.ndarray:
    """Max-combined unnormalised Gaussians exp(-d² / 2σ²) at integer pixels.

    points: (N, K, 3) x, y, v in heatmap pixels (v > 0 draws); size: (W, H) or an int; sigma: scalar or per-K;
    radius: window half-size (default 3σ; pixels farther than that in x or y stay 0). Returns (K, H, W) float32.
    """
    w, h = _wh(size)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, np.shape(points)[-2], 3)
    n, k = pts.shape[:2]
    sig = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (k,))
    rad = 3.0 * sig if radius is None else np.broadcast_to(np.asarray(radius, dtype=np.float64), (k,))
    out = np.zeros((k, h, w), np.float64)
    if n == 0:
        return out.astype(np.float32)
    xs = np.arange(w, dtype=np.float64)
    ys = np.arange(h, dtype=np.float64)
    dx = xs[None, None, :] - pts[..., 0:1]                          # (N, K, W)
    dy = ys[None, None, :] - pts[..., 1:2]                          # (N, K, H)
    on = pts[..., 2] > 0                                            # (N, K)
    gx = np.where(np.abs(dx) <= rad[None, :, None], np.exp(-dx ** 2 / (2 * sig[None, :, None] ** 2)), 0.0)
    gy = np.where(np.abs(dy) <= rad[None, :, None], np.exp(-dy ** 2 / (2 * sig[None, :, None] ** 2)), 0.0)
    g = gy[..., :, None] * gx[..., None, :] * on[..., None, None]  # (N, K, H, W)
    return g.max(axis=0).astype(np.float32)


def udp_heatmaps(keypoints: np.ndarray, input_size, heatmap_size, sigma: float = 2.0
                 ) -> tuple[np.ndarray, np.ndarray]:
    """mmpose's UDP Gaussian targets (``_udp_generate_target``, GaussianHeatmap): stride (input - 1)/(heatmap - 1),
    window of radius 3σ around the rounded position, value exp(-|p - μ|² / 2σ²) with the exact (sub-pixel) μ.

    keypoints: (K, 3) or (N, K, 3) in network-input pixels; several people are max-combined.
    Returns heatmaps (K, Hh, Wh) float32 and weights (K,) float32 (labelled and the window touches the map)."""
    kp = np.asarray(keypoints, dtype=np.float64)
    kp = kp[None] if kp.ndim == 2 else kp
    iw, ih = _wh(input_size)
    w, h = _wh(heatmap_size)
    n, k = kp.shape[:2]
    tmp = sigma * 3
    stride = (np.array([iw, ih], np.float64) - 1.0) / (np.array([w, h], np.float64) - 1.0)
    mu_ac = kp[..., :2] / stride                                     # (N, K, 2)
    mu = np.trunc(mu_ac + 0.5)                                       # python int() truncation
    ul = np.trunc(mu - tmp)
    br = np.trunc(mu + tmp + 1)
    out_of_map = (ul[..., 0] >= w) | (ul[..., 1] >= h) | (br[..., 0] < 0) | (br[..., 1] < 0)
    valid = (kp[..., 2] > 0) & ~out_of_map                           # (N, K)
    xs = np.arange(w, dtype=np.float64)
    ys = np.arange(h, dtype=np.float64)
    inx = (xs >= ul[..., 0:1]) & (xs < br[..., 0:1])                 # (N, K, W)
    iny = (ys >= ul[..., 1:2]) & (ys < br[..., 1:2])
    ex = np.where(inx, (xs - mu_ac[..., 0:1]) ** 2, np.inf)
    ey = np.where(iny, (ys - mu_ac[..., 1:2]) ** 2, np.inf)
    g = np.exp(-(ey[..., :, None] + ex[..., None, :]) / (2 * sigma ** 2)) * valid[..., None, None]
    return g.max(axis=0).astype(np.float32), valid.any(axis=0).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# DEKR
# ----------------------------------------------------------------------------------------------------------
def dekr_joints(keypoints: np.ndarray, areas: np.ndarray, iscrowd: np.ndarray, num_keypoints: np.ndarray,
                area_check: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DEKR per-person joints with the centre slot (spec §2.1), in original pixels.

    Annotations that are crowd *and* have 0 keypoints are dropped. Centre = sum of the K (x, y) / number of
    labelled keypoints (so the mean of the labelled ones), v = 1; with ``area_check`` (COCO) a person with
    area < 32² gets centre v = 0 and (0, 0). QUIRK kept: a person without keypoints gets centre (0, 0) with v = 1.
    The offset-weight "area" is computed *before* the centre is filled, over all K + 1 rows incl. zero rows:
    (max x - min x)² + (max y - min y)², i.e. usually max_x² + max_y² (spec §2.1 QUIRK).

    Returns (joints (P, K+1, 3) float64, area (P,) float64, kept indices (P,))."""
    kp = np.asarray(keypoints, dtype=np.float64)
    keep = np.nonzero(~(np.asarray(iscrowd, bool) & (np.asarray(num_keypoints) == 0)))[0]
    kp = kp[keep]
    p, k = kp.shape[:2]
    joints = np.zeros((p, k + 1, 3))
    joints[:, :k] = kp
    xy = joints[..., :2]
    area = (xy[..., 0].max(1) - xy[..., 0].min(1)) ** 2 + (xy[..., 1].max(1) - xy[..., 1].min(1)) ** 2 \
        if p else np.zeros((0,))
    nvis = np.count_nonzero(kp[..., 2], axis=1)
    center = np.where(nvis[:, None] > 0, kp[..., :2].sum(1) / np.maximum(nvis, 1)[:, None], 0.0)
    joints[:, k, :2] = center
    joints[:, k, 2] = 1.0
    if area_check:
        small = np.asarray(areas, dtype=np.float64)[keep] < 32 ** 2
        joints[small, k] = 0.0
    return joints, area, keep


def dekr_heatmaps(joints: np.ndarray, output_size, sigma: float = 2.0, center_sigma: float = 4.0,
                  bg_weight: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """DEKR ``HeatmapGenerator`` (spec §2.3) on joints at output resolution (P, J, 3), J = K + 1.

    A joint with v > 0 and 0 <= x, y < R draws exp(-((X-x)² + (Y-y)²) / 2σ²) over integer pixels in
    [floor(x - 3σ - 1), ceil(x + 3σ + 2)) (clipped), people max-combined. σ = ``center_sigma`` only for channel
    index >= 17 (QUIRK: CrowdPose's centre, index 14, uses ``sigma``). Weights: 1 inside those windows (also where
    the Gaussian is ~0), ``bg_weight`` elsewhere; the official loss weight is this times the ignore mask.
    Returns (heatmaps (J, H, W), weights (J, H, W)) float32."""
    w, h = _wh(output_size)
    jt = np.asarray(joints, dtype=np.float64)
    p, j = jt.shape[:2] if jt.ndim == 3 else (0, 0)
    hm = np.zeros(j * h * w if j else 0, np.float64)
    wt = np.full((j, h, w), bg_weight, np.float32)
    if p and j:
        sig = np.where(np.arange(j) < 17, sigma, center_sigma)                     # (J,)
        x, y = jt[..., 0], jt[..., 1]                                              # (P, J)
        ok = (jt[..., 2] > 0) & (x >= 0) & (y >= 0) & (x < w) & (y < h)
        ulx = np.floor(x - 3 * sig - 1)
        uly = np.floor(y - 3 * sig - 1)
        brx = np.ceil(x + 3 * sig + 2)
        bry = np.ceil(y + 3 * sig + 2)
        n = int(np.max(6 * sig + 5))                                               # max window side
        off = np.arange(n, dtype=np.float64)
        sx = ulx[..., None] + off                                                  # (P, J, n)
        sy = uly[..., None] + off
        vx = ok[..., None] & (sx < brx[..., None]) & (sx >= 0) & (sx < w)
        vy = ok[..., None] & (sy < bry[..., None]) & (sy >= 0) & (sy < h)
        g = np.exp(-((sx[..., None, :] - x[..., None, None]) ** 2 + (sy[..., :, None] - y[..., None, None]) ** 2)
                   / (2 * sig[None, :, None, None] ** 2))                          # (P, J, n, n) [y, x]
        v = vy[..., :, None] & vx[..., None, :]
        ch = np.broadcast_to(np.arange(j)[None, :, None, None], v.shape)
        lin = (ch * h + np.broadcast_to(sy[..., :, None], v.shape)) * w + np.broadcast_to(sx[..., None, :], v.shape)
        lin = lin[v].astype(np.int64)
        np.maximum.at(hm, lin, g[v])
        wt.reshape(-1)[lin] = 1.0
    return hm.reshape(j, h, w).astype(np.float32), wt


def dekr_offsets(joints: np.ndarray, area: np.ndarray, output_size, radius: int = 4
                 ) -> tuple[np.ndarray, np.ndarray]:
    """DEKR ``OffsetGenerator`` (spec §2.4) on joints at output resolution (P, K+1, 3) (last = centre) and the
    scaled areas (P,).

    For a person whose centre has v >= 1 and truncated position (int(x), int(y)) inside the map (Official code:
    int() truncates toward 0, so a centre at x in (-1, 0) passes), every labelled joint inside the map writes
    target (px - x, py - y) and weight 1/sqrt(area) at the asymmetric 8x8 window px in [cx - 4, cx + 4) (clipped);
    a person whose centre is outside gets no offsets, even for joints inside (train_step README Q8). Conflicts follow
    the official sequential rule: a pixel that already holds a non-zero target for that joint keeps it when the
    per-pixel area (shared by all joints) is smaller than this person's area ("smaller person wins").
    Returns (offsets (2K, H, W), weights (2K, H, W)) float32."""
    w, h = _wh(output_size)
    jt = np.asarray(joints, dtype=np.float64)
    area = np.asarray(area, dtype=np.float64).reshape(-1)
    k = jt.shape[1] - 1 if jt.ndim == 3 else 0
    off = np.zeros((k, 2, h, w), np.float32)
    wts = np.zeros((k, 2, h, w), np.float32)
    area_map = np.zeros((h, w), np.float32)
    if jt.ndim != 3 or len(jt) == 0:
        return off.reshape(2 * k, h, w), wts.reshape(2 * k, h, w)
    ct = np.trunc(jt[:, -1, :2])                                                  # python int()
    ct_ok = (np.trunc(jt[:, -1, 2]) >= 1) & (ct[:, 0] >= 0) & (ct[:, 1] >= 0) & (ct[:, 0] < w) & (ct[:, 1] < h)
    kp = jt[:, :-1]
    kp_ok = (kp[..., 2] > 0) & (kp[..., 0] >= 0) & (kp[..., 1] >= 0) & (kp[..., 0] < w) & (kp[..., 1] < h)
    for p in np.nonzero(ct_ok)[0]:  # sequential over people: the official conflict rule depends on the order
        valid = kp_ok[p]
        if not valid.any():
            continue
        cx, cy = int(ct[p, 0]), int(ct[p, 1])
        px = np.arange(max(cx - radius, 0), min(cx + radius, w))
        py = np.arange(max(cy - radius, 0), min(cy + radius, h))
        if len(px) == 0 or len(py) == 0:
            continue
        gy, gx = np.meshgrid(py, px, indexing="ij")                                 # (Qy, Qx)
        ox = (gx[None] - kp[p, :, 0, None, None]).astype(np.float32)                # (K, Qy, Qx)
        oy = (gy[None] - kp[p, :, 1, None, None]).astype(np.float32)
        cur = off[:, :, gy, gx]                                                     # (K, 2, Qy, Qx)
        occupied = (cur[:, 0] != 0) | (cur[:, 1] != 0)                              # (K, Qy, Qx)
        # Official loop: joint j skips pixel q if its slot is occupied and area_map[q] < area[p] (float32 map vs
        # float64 area). area_map[q] is the stored area until this person first writes q, then float32(area[p]),
        # which can itself be < area[p] after rounding.
        before = area_map[gy, gx] < area[p]                                         # (Qy, Qx)
        after = bool(np.float32(area[p]) < area[p])
        can_first = valid[:, None, None] & (~occupied | ~before[None])
        first = np.where(can_first.any(0), can_first.argmax(0), k)                  # (Qy, Qx)
        idx = np.arange(k)[:, None, None]
        write = (idx == first[None]) | ((idx > first[None]) & valid[:, None, None] & (~occupied | (not after)))
        wv = np.float32(1.0 / np.sqrt(area[p]))
        kk, yy, xx = np.nonzero(write)
        off[kk, 0, gy[yy, xx], gx[yy, xx]] = ox[kk, yy, xx]
        off[kk, 1, gy[yy, xx], gx[yy, xx]] = oy[kk, yy, xx]
        wts[kk, :, gy[yy, xx], gx[yy, xx]] = wv
        wrote = write.any(0)
        area_map[gy[wrote], gx[wrote]] = area[p]
    return off.reshape(2 * k, h, w), wts.reshape(2 * k, h, w)
