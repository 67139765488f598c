"""DEKR outputs -> people: the official per-image inference (tools/valid.py; spec Sec. 3). Flip merge, offsets to a
pose map, per-scale center NMS and top-k, pose NMS over the scales, optional heatmap matching, the map to original
pixels. :func:`run_pipeline` takes any network callable (the PyTorch model or an ONNX Runtime session)."""
from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import curve_fit

from ...codecs.heatmap_offset import resize_for_test
from ...errors import ConfigError
from ...data.transforms import to_tensor_normalize
from ...structures import PoseResult
from .config import DEKRConfig

__all__ = ["flip_input", "offset_to_pose", "merge_flip", "up_interpolate", "center_proposals", "pose_nms",
           "match_pose_to_heatmap", "run_pipeline", "poses_to_result", "BatchedScaleOne"]

_STRIDE = 4.0        # official DATASET.INPUT_SIZE / OUTPUT_SIZE


def flip_input(x: torch.Tensor, shift: int = 3) -> torch.Tensor:
    """Official flip-test input: flip along W, then shift left by 3 pixels (the last 3 columns keep their flipped
    values) so that the input flip matches the output flip x -> w-1-x under x_in = 4 x_out."""
    xf = x.flip(3)
    xf[..., :-shift] = xf[..., shift:].clone()
    return xf


def offset_to_pose(offset: torch.Tensor) -> torch.Tensor:
    """(N, 2K, h, w) offsets -> pose map (N, 2K, h, w): joint j at (x - off_2j, y - off_2j+1), output pixels."""
    n, c, h, w = offset.shape
    xs = torch.arange(w, dtype=offset.dtype, device=offset.device).view(1, 1, 1, w)
    ys = torch.arange(h, dtype=offset.dtype, device=offset.device).view(1, 1, h, 1)
    off = offset.view(n, c // 2, 2, h, w)
    return torch.stack([xs - off[:, :, 0], ys - off[:, :, 1]], dim=2).view(n, c, h, w)


def merge_flip(heatmap: torch.Tensor, posemap: torch.Tensor, flip_index: list[int]):
    """Average the plain (batch 0) and flipped (batch 1) outputs in the plain frame: heatmaps flipped back with
    left/right channels swapped (center stays), flipped poses reindexed, x -> w-1-x, map flipped back along W."""
    k = len(flip_index)
    h, w = heatmap.shape[-2:]
    heat = (heatmap[:1] + heatmap[1:2].flip(3)[:, list(flip_index) + [k]]) / 2
    pf = posemap[1:2].view(1, k, 2, h, w)[:, flip_index]
    pf = torch.stack([(w - 1) - pf[:, :, 0], pf[:, :, 1]], dim=2).view(1, 2 * k, h, w).flip(3)
    return heat, (posemap[:1] + pf) / 2


def up_interpolate(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Official upsampling to the base size: bilinear align_corners=True to (S - f + 1) with f = int(S / s), then
    replicate f - 1 rows / columns at the bottom / right, so output pixel i reads input pixel i / f."""
    h, w = x.shape[-2:]
    fh, fw = int(size[0] / h), int(size[1] / w)
    y = F.interpolate(x, size=(size[0] - fh + 1, size[1] - fw + 1), mode="bilinear", align_corners=True)
    return F.pad(y, (0, fw - 1, 0, fh - 1), mode="replicate")


def center_proposals(heatmap: torch.Tensor, posemap: torch.Tensor, scale: float, cfg: DEKRConfig) -> torch.Tensor:
    """People at one scale: NMS on the center heatmap (max-pool 3/5/7 by map size, keep exact maxima), top
    MAX_NUM_PEOPLE above KEYPOINT_THRESHOLD; their poses x 4/scale (base pixels) with the center value as score.
    Returns (P, K, 3) in descending center order."""
    h, w = heatmap.shape[-2:]
    center = heatmap[0, -1:]                                            # (1, h, w)
    size = (h + w) / 2.0
    k = 7 if size > cfg.pool_threshold1 else 5 if size > cfg.pool_threshold2 else 3
    pooled = F.max_pool2d(center, k, 1, (k - 1) // 2)
    center = center * (pooled == center).float()
    scores, inds = center.view(-1).topk(min(cfg.max_num_people, h * w))
    keep = scores > cfg.keypoint_threshold
    scores, inds = scores[keep], inds[keep]
    nk = posemap.shape[1] // 2
    poses = posemap[0].view(nk, 2, h * w)[:, :, inds].permute(2, 0, 1) * (_STRIDE / scale)   # (P, K, 2)
    return torch.cat([poses, scores.view(-1, 1, 1).expand(-1, nk, 1)], dim=2)


def pose_nms(proposals: list[torch.Tensor], scales_desc: list[float], heatmap_avg: torch.Tensor, cfg: DEKRConfig):
    """Merge the scales' proposals and remove duplicates (official ``pose_nms``).

    proposals: per scale (descending scale order) (P_s, K, 3); heatmap_avg (K+1, H, W) at base resolution.
    Non-unit scales' scores are rescaled to scale 1's maximum x DECREASE; each keypoint is scored by the heatmap
    value under it (nearest-floor lookup) x the center score; a proposal j overlaps i when more than NMS_NUM_THRE
    joints lie within NMS_THRE * sqrt(area_i); greedily, the group of proposal i keeps its member with the highest
    mean heat value. Returns (poses (P', K, 3) float32 numpy, instance scores (P',), keep indices)."""
    props = [p.clone().cpu().float() for p in proposals]
    one = scales_desc.index(1.0)
    ref_max = props[one][:, :, 2].max() if len(props[one]) else torch.tensor(1.0)
    for i, p in enumerate(props):
        if i != one:
            m = p[:, :, 2].max() if len(p) else torch.tensor(1.0)
            p[:, :, 2] = p[:, :, 2] / m * ref_max * cfg.decrease
    allp = torch.cat(props, dim=0)                                      # (P, K, 3)
    k = heatmap_avg.shape[0] - 1
    if len(allp) == 0:
        return np.zeros((0, k, 3), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int64)
    coord, score = allp[:, :, :2], allp[:, :, 2:]
    hm = heatmap_avg[:k].cpu()
    hh, ww = hm.shape[-2:]
    yb = coord[:, :, 1].floor().clamp(0, hh - 1).long()
    xl = coord[:, :, 0].floor().clamp(0, ww - 1).long()
    heatval = hm.view(k, -1).t().gather(0, yb * ww + xl).unsqueeze(-1)  # (P, K, 1)
    heat_score = heatval.sum(1)[:, 0] / k
    poses = torch.cat([coord, score * heatval], dim=2)
    keep = _greedy_pose_nms(coord, heat_score, cfg.nms_threshold, cfg.nms_num_threshold)
    keep_t = torch.as_tensor(keep, dtype=torch.long)
    poses, heat_score = poses[keep_t], heat_score[keep_t]
    if len(keep) > cfg.max_num_people:
        heat_score, top = heat_score.topk(cfg.max_num_people)
        poses = poses[top]
    poses = poses.numpy()
    return poses, poses[:, :, 2].mean(axis=1), np.asarray(keep, dtype=np.int64)


def _greedy_pose_nms(coord: torch.Tensor, heat_score: torch.Tensor, thre: float, num_thre: int) -> list[int]:
    """Official ``nms_core``: the overlap relation is one vectorised (P, P, K) distance test; the greedy pass is
    sequential over at most MAX_NUM_PEOPLE x scales proposals on a precomputed boolean matrix."""
    xy_max, xy_min = coord.max(dim=1).values, coord.min(dim=1).values
    area = ((xy_max - xy_min) ** 2).sum(1)                              # (P,) squared extent diagonal
    dist = (coord[:, None] - coord[None]).pow(2).sum(3).sqrt()          # (P, P, K)
    overlap = ((dist < thre * area.sqrt()[:, None, None]).sum(2) > num_thre).numpy()
    heat = heat_score.numpy()
    suppressed = np.zeros(len(coord), dtype=bool)
    keep = []
    for i in range(len(coord)):
        if suppressed[i]:
            continue
        group = np.flatnonzero(overlap[i])
        if len(group) == 0:   # degenerate pose (zero extent): its own group
            group = np.array([i])
        best = int(group[np.argmax(heat[group])])
        if suppressed[best]:
            continue
        keep.append(best)
        suppressed[group] = True
    return keep


def match_pose_to_heatmap(poses: np.ndarray, heatmap_avg: torch.Tensor, cfg: DEKRConfig):
    """TEST.MATCH_HMP: (a) move each joint to the nearest of its channel's top MAX_NUM_PEOPLE heatmap peaks (5x5
    NMS) when closer than MAX_ABSORB_DISTANCE; (b) refine joints scoring above ADJUST_THRESHOLD by a 2-D Gaussian
    fit (scipy ``curve_fit``) in a (2*GUASSIAN_KERNEL+1)^2 window. Returns (poses, fit calls, fits that worked)."""
    poses = np.array(poses, dtype=np.float32, copy=True)
    k = heatmap_avg.shape[0] - 1
    hm = heatmap_avg[:k].detach().cpu().float()                          # (K, H, W)
    hh, ww = hm.shape[-2:]
    if len(poses) == 0:
        return poses, 0, 0
    # (a) absorb into heatmap peaks
    pooled = F.max_pool2d(hm[None], 5, 1, 2)[0]
    peaks_val = hm * (pooled == hm).float()
    _, idx = peaks_val.view(k, -1).topk(min(cfg.max_num_people, hh * ww), dim=1)      # (K, M)
    peaks = torch.stack([idx % ww, idx // ww], dim=-1).float()           # (K, M, 2) x, y
    xy = torch.from_numpy(poses[:, :, :2])                               # (P, K, 2)
    d = (xy[:, :, None, :] - peaks[None]).pow(2).sum(-1).sqrt()          # (P, K, M)
    dmin, arg = d.min(dim=2)
    nearest = peaks[torch.arange(k)[None, :], arg]                       # (P, K, 2)
    absorb = (dmin < cfg.max_absorb_distance).numpy()
    poses[:, :, :2] = np.where(absorb[..., None], nearest.numpy(), poses[:, :, :2])
    # (b) Gaussian refinement, official loop (curve_fit per point, cache of fitted (row, col) per joint)
    calls = ok = 0
    hm_np = hm.numpy()
    for j in range(k):
        cache: dict[tuple[int, int], tuple[float, float]] = {}
        for p in range(len(poses)):
            if not poses[p, j, 2] > cfg.adjust_threshold:
                continue
            r, c = int(poses[p, j, 1] + 0.5), int(poses[p, j, 0] + 0.5)
            if (r, c) in cache:
                poses[p, j, 1], poses[p, j, 0] = cache[(r, c)]
                continue
            calls += 1
            fit = _gaussian_refine(hm_np[j], r, c, cfg.gaussian_kernel, cfg.sigma)
            if fit is not None:
                ok += 1
                poses[p, j, 1], poses[p, j, 0] = fit
                cache[(r, c)] = (float(poses[p, j, 1]), float(poses[p, j, 0]))
    return poses, calls, ok


def _gauss2d(uv, amplitude, y0, x0, sigma):
    u, v = uv
    return amplitude * np.exp(-((u - x0) ** 2 + (v - y0) ** 2) / (2 * sigma ** 2))


def _gaussian_refine(hm: np.ndarray, r: int, c: int, radius: int, sigma: float):
    """Fit a Gaussian around (r, c); returns the refined (y, x) or None when the fit fails (official: point kept).
    Official code: the window is flattened row-major but element n is paired with (v, u) = (n // rows, n % rows),
    which scrambles non-square windows at the map border; reproduced."""
    hh, ww = hm.shape
    rc, cc = min(max(r, 0), hh - 1), min(max(c, 0), ww - 1)
    r0, r1 = max(0, rc - radius), min(hh - 1, rc + radius)
    c0, c1 = max(0, cc - radius), min(ww - 1, cc + radius)
    patch = hm[r0:r1 + 1, c0:c1 + 1]
    rows = patch.shape[0]
    n = np.arange(patch.size)
    uv = (n % rows, n // rows)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            popt, _ = curve_fit(_gauss2d, uv, patch.ravel(), p0=(hm[rc, cc], rc - r0, cc - c0, sigma), maxfev=300)
    except Exception:  # noqa: BLE001 - official: any failure leaves the point unchanged
        return None
    return r0 + popt[1], c0 + popt[2]


def _infer_scale(net, x: torch.Tensor, flip: bool, flip_index: list[int]):
    """Network outputs at one scale for one image, flip-merged: heatmaps (1, K+1, h, w), pose map (1, 2K, h, w)."""
    inp = torch.cat([x, flip_input(x)]) if flip else x
    heatmap, offset = net(inp)
    posemap = offset_to_pose(offset.float())
    heatmap = heatmap.float()
    if flip:
        return merge_flip(heatmap, posemap, flip_index)
    return heatmap[:1], posemap[:1]


@torch.no_grad()
def run_pipeline(net, image_rgb: np.ndarray | None, cfg: DEKRConfig, flip_index: list[int], input_size: int,
                 flip: bool = True, scales=(1.0,), base_input: torch.Tensor | None = None,
                 device: torch.device | str = "cpu", trace: dict | None = None):
    """Official single-image inference up to poses in base-image (scale-1 input) pixels.

    net: callable (B, 3, H, W) -> (heatmaps, offsets) (the PyTorch model or an ONNX Runtime wrapper).
    image_rgb: original uint8 RGB image (needed for scales != 1); base_input: the normalised scale-1 input (1, 3, H, W)
    when already computed. Returns (poses (P, K, 3) [x, y, keypoint score], scores (P,)); ``trace`` (a dict) collects
    every intermediate stage under the reference files' names."""
    scales_desc = sorted((float(s) for s in scales), reverse=True)
    if 1.0 not in scales_desc:
        raise ConfigError(f"test.scales: must contain 1.0 (DEKR maps everything to the scale-1 size), got {scales}")
    heatmap_sum, proposals = None, []
    for s in scales_desc:
        if s == 1.0 and base_input is not None:
            x = base_input
        else:
            if image_rgb is None:
                raise ValueError(f"DEKR multi-scale test: scale {s} needs the original image (meta['image_raw'])")
            resized, _ = resize_for_test(image_rgb, input_size, s)
            x = to_tensor_normalize(resized)[None]
            if trace is not None:
                trace[f"s{s:g}/image_resized_uint8"] = resized
        heatmap, posemap = _infer_scale(net, x.to(device), flip, flip_index)
        h, w = heatmap.shape[-2:]
        r = _STRIDE / s
        up = up_interpolate(heatmap, (int(r * h), int(r * w)))
        heatmap_sum = up if heatmap_sum is None else heatmap_sum + up
        props = center_proposals(heatmap, posemap, s, cfg)
        proposals.append(props)
        if trace is not None:
            trace[f"s{s:g}/heatmap_merged"] = heatmap.cpu().numpy()
            trace[f"s{s:g}/posemap_merged"] = posemap.cpu().numpy()
            trace[f"s{s:g}/proposals"] = props.cpu().numpy()
    heatmap_avg = heatmap_sum[0] / len(scales_desc)                       # (K+1, H_b, W_b)
    poses, scores, keep = pose_nms(proposals, scales_desc, heatmap_avg, cfg)
    if trace is not None:
        trace.update({"heatmap_avg": heatmap_avg[None].cpu().numpy(), "nms_keep_inds": keep,
                      "nms_poses": poses.copy(), "nms_scores": scores.copy()})
    if cfg.match_hmp:
        poses, calls, ok = match_pose_to_heatmap(poses, heatmap_avg, cfg)
        if trace is not None:
            trace.update({"matched_poses": poses.copy(), "gauss_fit_calls": calls, "gauss_fit_ok": ok})
    return poses, scores


def poses_to_result(poses: np.ndarray, scores: np.ndarray) -> PoseResult:
    """PoseResult with keypoint-extent boxes (as the official results' bbox)."""
    k = poses.shape[1] if poses.ndim == 3 else 0
    if len(poses) == 0:
        return PoseResult.empty(k)
    boxes = np.concatenate([poses[:, :, :2].min(1), poses[:, :, :2].max(1)], axis=1)
    return PoseResult(boxes, poses, scores)



class BatchedScaleOne:
    """Network callable for one image of a batch whose scale-1 outputs were computed for the whole batch: returns
    image i's rows (plain, flipped) for the scale-1 input and runs the network for other scales."""

    def __init__(self, model, outputs, i: int, n: int, flip: bool, size: tuple[int, int]):
        self.model, self.size = model, tuple(size)
        rows = [i, n + i] if flip else [i]
        self.outputs = tuple(o[rows] for o in outputs)
        self.rows = len(rows)

    def __call__(self, x: torch.Tensor):
        if x.shape[0] == self.rows and tuple(x.shape[-2:]) == self.size:
            return self.outputs
        return self.model(x)
