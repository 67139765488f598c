"""MPII PCKh: a joint is correct when its distance to the ground truth is within a fraction (0.5, 0.1) of the
person's head size; reported per joint group (Head = head top, Shoulder, Elbow, Wrist, Hip, Knee, Ankle) and as
the mean over all joints except pelvis and thorax (as the official MATLAB code and mmpose do).

Head size: ``0.6 x`` the head-box diagonal when the ground truth carries ``headbox`` (the official normaliser);
otherwise the head-segment length (upper neck to head top), the normaliser PCKh is defined by in the MPII paper.
The ground truth is MPII in mmpose's json layout (1-based MATLAB pixels, converted to 0-based like the reader);
predictions are 0-based pixels: a COCO-style results list (people of an image are matched to ground-truth people
by the Hungarian algorithm on head-normalised distance; an ``ann_id`` field, the index of the person in the
ground-truth json, pins the match instead) or an array (N, 16, 2+) in ground-truth order.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..data.datasets import mpii_image_ids
from ..data.keypoints import get_meta
from ..errors import DataError
from ..jsonio import read_json

__all__ = ["evaluate_pckh", "format_pckh", "PCKH_GROUPS"]

# name -> (right joint, left joint) in MPII order; Head is the head top alone (mmpose).
PCKH_GROUPS = {"Head": (9, 9), "Shoulder": (12, 13), "Elbow": (11, 14), "Wrist": (10, 15), "Hip": (2, 3),
               "Knee": (1, 4), "Ankle": (0, 5)}
SC_BIAS = 0.6
_EXCLUDED = (6, 7)  # pelvis, thorax


def _load(obj, what):
    if isinstance(obj, (str, os.PathLike)):
        p = Path(obj).expanduser()
        return read_json(p, what), str(p)
    return obj, f"<{what}>"


def _numbers(value, shape_text: str, name: str, i: int, key: str) -> np.ndarray:
    """``value`` as a float array, or a one-line error naming the entry and what was expected."""
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{name}: entry {i}: '{key}' must be {shape_text} numbers") from None


def _gt_arrays(data, name):
    if not isinstance(data, list) or not data or not all(isinstance(p, dict) for p in data):
        raise DataError(f"{name}: expected the MPII json layout (a list of people with 'image', 'joints', "
                        f"'joints_vis')")
    for i, p in enumerate(data):
        for key in ("image", "joints", "joints_vis"):
            if key not in p:
                raise DataError(f"{name}: entry {i} lacks '{key}'")
        j = _numbers(p["joints"], "16 (x, y)", name, i, "joints")
        v = _numbers(p["joints_vis"], "16", name, i, "joints_vis")
        if j.ndim != 2 or j.shape[0] != 16 or j.shape[1] < 2 or v.shape != (16,):
            raise DataError(f"{name}: entry {i}: expected 16 joints (x, y) and 16 joints_vis, got shapes "
                            f"{j.shape} and {v.shape}")
        if not np.isfinite(j[v > 0, :2]).all():
            raise DataError(f"{name}: entry {i}: a visible joint contains NaN or infinity")
    joints = np.asarray([np.asarray(p["joints"], dtype=np.float64)[:, :2] for p in data]) - 1.0    # 0-based
    vis = np.asarray([p["joints_vis"] for p in data], dtype=np.float64) > 0
    head = np.asarray([p.get("headbox", [np.nan] * 4) for p in data], dtype=np.float64).reshape(-1, 4)
    size = SC_BIAS * np.linalg.norm(head[:, 2:] - head[:, :2], axis=1)
    seg = np.linalg.norm(joints[:, 9] - joints[:, 8], axis=1)
    seg = np.where(vis[:, 8] & vis[:, 9], seg, np.nan)
    size = np.where(np.isfinite(size), size, seg)
    ids = mpii_image_ids([str(p["image"]) for p in data])
    img = np.asarray([ids[str(p["image"])] for p in data], dtype=np.int64)
    return joints, vis, size, img


def _predictions(res, name, joints, vis, size, img):
    """(N, 16, 2) predictions aligned with the ground-truth people (NaN where a person got none)."""
    n = len(joints)
    if isinstance(res, np.ndarray) or (isinstance(res, list) and res and not isinstance(res[0], dict)):
        arr = np.asarray(res, dtype=np.float64)
        if arr.ndim != 3 or arr.shape[0] != n or arr.shape[1] != 16 or arr.shape[2] < 2:
            raise DataError(f"{name}: expected predictions of shape ({n}, 16, 2 or 3), got {arr.shape}")
        if not np.isfinite(arr[..., :2]).all():
            raise DataError(f"{name}: predictions contain NaN or infinity")
        return arr[..., :2]
    if not isinstance(res, list):
        raise DataError(f"{name}: expected a list of results {{image_id, keypoints: [x, y, s] * 16}}")
    pred = np.full((n, 16, 2), np.nan)
    known = set(img.tolist())
    per_image: dict[int, list] = {}
    pinned = []
    for i, r in enumerate(res):
        if not isinstance(r, dict) or "image_id" not in r or "keypoints" not in r:
            raise DataError(f"{name}: entry {i} lacks 'image_id' or 'keypoints'")
        kp = _numbers(r["keypoints"], "48", name, i, "keypoints")
        if kp.size != 48:
            raise DataError(f"{name}: entry {i} (image_id {r['image_id']}): expected 48 keypoint values "
                            f"(16 keypoints x 3) for mpii, got {kp.size}")
        score = _numbers(r.get("score", 1.0), "a", name, i, "score")
        if not np.isfinite(kp).all() or score.shape != () or not np.isfinite(score):
            raise DataError(f"{name}: entry {i} (image_id {r['image_id']}): keypoints and score must be finite "
                            f"numbers")
        if r["image_id"] not in known:
            raise DataError(f"{name}: entry {i}: image_id {r['image_id']} is not in the ground truth")
        if "ann_id" in r:
            a = int(r["ann_id"])
            if not 0 <= a < n or img[a] != r["image_id"]:
                raise DataError(f"{name}: entry {i}: ann_id {a} is not a person of image {r['image_id']}")
            pinned.append((a, kp.reshape(16, 3)[:, :2]))
        else:
            per_image.setdefault(int(r["image_id"]), []).append((float(score), kp.reshape(16, 3)[:, :2]))
    for a, p in pinned:
        pred[a] = p
    from scipy.optimize import linear_sum_assignment

    for iid, preds in per_image.items():
        people = np.nonzero((img == iid) & np.isnan(pred[:, 0, 0]))[0]
        if len(people) == 0:
            continue
        p = np.stack([q for _, q in preds])                                              # (P, 16, 2)
        d = np.linalg.norm(p[:, None] - joints[people][None], axis=-1)                   # (P, G, 16)
        norm = np.where(np.isfinite(size[people]) & (size[people] > 0), size[people], 1.0)
        e = np.minimum(d / norm[None, :, None], 1.0)
        v = vis[people][None]
        cost = (e * v).sum(-1) / np.maximum(v.sum(-1), 1)                                # (P, G)
        rows, cols = linear_sum_assignment(cost)
        pred[people[cols]] = p[rows]
    return pred


def evaluate_pckh(gt, results, thresholds=(0.5, 0.1)) -> dict[str, float]:
    """PCKh of ``results`` against MPII ``gt`` (paths, lists or an array). Fractions in [0, 1]; keys: the joint
    groups (at 0.5), ``PCKh`` (mean at 0.5), ``PCKh@0.1`` and ``PCKh/<joint>`` per joint (at 0.5)."""
    gdata, gname = _load(gt, "ground-truth")
    rdata, rname = _load(results, "results")
    joints, vis, size, img = _gt_arrays(gdata, gname)
    pred = _predictions(rdata, rname, joints, vis, size, img)
    ok_person = np.isfinite(size) & (size > 0)
    jv = vis & ok_person[:, None]                                                        # (N, 16)
    err = np.linalg.norm(pred - joints, axis=-1) / np.where(ok_person, size, 1.0)[:, None]
    err = np.where(np.isnan(err), np.inf, err)                                           # unmatched people
    count = jv.sum(0)                                                                    # (16,)
    names = get_meta("mpii").keypoint_names
    include = np.ones(16, bool)
    include[list(_EXCLUDED)] = False
    out: dict[str, float] = {}
    per_thr = {}
    for t in thresholds:
        correct = ((err <= t) & jv).sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_thr[t] = correct / count
        out_key = "PCKh" if t == 0.5 else f"PCKh@{t:g}"
        out[out_key] = float(correct[include].sum() / max(count[include].sum(), 1))
    pck = per_thr[thresholds[0]]
    groups = {g: float(0.5 * (pck[r] + pck[l])) for g, (r, l) in PCKH_GROUPS.items()}
    result = {**groups, "PCKh": out["PCKh"]}
    result.update({k: v for k, v in out.items() if k != "PCKh"})
    result.update({f"PCKh/{n}": float(pck[i]) for i, n in enumerate(names)})
    return result


def format_pckh(metrics: dict) -> str:
    """The standard MPII table (percent) followed by the per-joint table."""
    groups = list(PCKH_GROUPS) + ["PCKh", "PCKh@0.1"]
    cells = [f"{100 * metrics[g]:.2f}" if g in metrics and np.isfinite(metrics[g]) else "-" for g in groups]
    w = [max(len(g), len(c)) for g, c in zip(groups, cells)]
    lines = ["MPII PCKh@0.5 (%)", " | ".join(g.rjust(x) for g, x in zip(groups, w)),
             "-+-".join("-" * x for x in w), " | ".join(c.rjust(x) for c, x in zip(cells, w))]
    joints = [k for k in metrics if k.startswith("PCKh/")]
    if joints:
        lines.append("")
        lines.append("per joint (PCKh@0.5, %)")
        width = max(len(k) - 5 for k in joints)
        for k in joints:
            v = metrics[k]
            lines.append(f"  {k[5:]:<{width}}  {'-' if not np.isfinite(v) else f'{100 * v:6.2f}'}")
    return "\n".join(lines)
