"""Random ground truth and predictions for checking evaluators against the reference tools and benchmarking them.

Scenes mix everything the matching rules care about: crowd regions, people without keypoints, small / medium /
large people, occluded and unlabelled keypoints, and predictions that are noisy, duplicated, missing or false
positives, with tied scores and, optionally, all-zero keypoint scores.
"""
from __future__ import annotations

import numpy as np

__all__ = ["random_scene"]


def random_scene(num_images: int = 50, num_keypoints: int = 17, seed: int = 0, people: float = 4.0,
                 preds_per_person: float = 1.3, false_positives: float = 1.0, with_bbox: bool = False,
                 crowdpose: bool = False, tie_scores: bool = True, zero_score_prob: float = 0.02
                 ) -> tuple[dict, list]:
    """(ground truth COCO dict, results list). ``crowdpose`` writes CrowdPose-style GT (crowdIndex, no area,
    num_keypoints counting v == 2)."""
    rng = np.random.default_rng(seed)
    k = num_keypoints
    images, anns, res = [], [], []
    aid = 1
    for i in range(num_images):
        iid = int(rng.integers(1, 10 ** 9)) if i % 7 == 3 else i + 1
        while any(im["id"] == iid for im in images[-10:]):
            iid += 1
        w, h = int(rng.integers(200, 900)), int(rng.integers(200, 900))
        im = {"id": iid, "file_name": f"{iid}.jpg", "width": w, "height": h}
        if crowdpose:
            im["crowdIndex"] = float(np.round(rng.random(), 2))
        images.append(im)
        gts = []
        for _ in range(int(rng.poisson(people))):
            size = float(np.exp(rng.uniform(np.log(12), np.log(400))))      # person height, px
            bw, bh = size * rng.uniform(0.3, 0.8), size
            x0 = rng.uniform(-0.2 * bw, max(w - 0.8 * bw, 0.0))
            y0 = rng.uniform(-0.2 * bh, max(h - 0.8 * bh, 0.0))
            xy = np.stack([x0 + rng.random(k) * bw, y0 + rng.random(k) * bh], 1)
            v = rng.choice([0, 1, 2], size=k, p=[0.2, 0.2, 0.6])
            crowd = rng.random() < 0.04
            if crowd or rng.random() < 0.08:
                v[:] = 0
            xy = np.round(xy) if rng.random() < 0.5 else np.round(xy, 2)
            kp = np.concatenate([np.where(v[:, None] > 0, xy, 0.0), v[:, None]], 1)
            area = float(bw * bh * rng.uniform(0.3, 0.7))
            a = {"id": aid, "image_id": iid, "category_id": 1, "iscrowd": int(crowd),
                 "bbox": [round(float(x0), 2), round(float(y0), 2), round(float(bw), 2), round(float(bh), 2)],
                 "keypoints": [float(t) for t in kp.reshape(-1)],
                 "num_keypoints": int(np.count_nonzero(v == 2) if crowdpose else np.count_nonzero(v > 0))}
            if not crowdpose:
                a["area"] = round(area, 3)
            aid += 1
            anns.append(a)
            gts.append((a, xy, bw, bh, crowd, v))
        for a, xy, bw, bh, crowd, v in gts:
            if crowd or rng.random() < 0.15:      # missing
                continue
            for _ in range(1 + int(rng.poisson(preds_per_person - 1))):   # duplicates
                noise = rng.choice([0.004, 0.012, 0.03, 0.1]) * np.sqrt(bw * bh)
                p = xy + rng.normal(0, noise, xy.shape)
                res.append(_pred(rng, iid, p, k, with_bbox, tie_scores, zero_score_prob))
        for _ in range(int(rng.poisson(false_positives))):                   # false positives
            size = float(np.exp(rng.uniform(np.log(12), np.log(400))))
            p = np.stack([rng.uniform(0, w) + rng.random(k) * size * 0.5, rng.uniform(0, h) + rng.random(k) * size], 1)
            res.append(_pred(rng, iid, p, k, with_bbox, tie_scores, zero_score_prob))
    order = rng.permutation(len(res))
    res = [res[i] for i in order]
    gt = {"images": images, "annotations": anns,
          "categories": [{"id": 1, "name": "person", "supercategory": "person",
                          "keypoints": [f"kp{j}" for j in range(k)], "skeleton": []}]}
    return gt, res


def _pred(rng, iid, xy, k, with_bbox, tie_scores, zero_score_prob) -> dict:
    s = rng.random(k)
    if rng.random() < zero_score_prob:
        s[:] = 0.0
    score = float(np.round(rng.random(), 1 if tie_scores else 6))
    r = {"image_id": iid, "category_id": 1, "keypoints": [round(float(t), 3) for t in
                                                          np.concatenate([xy, s[:, None]], 1).reshape(-1)],
         "score": score}
    if with_bbox:
        x0, y0 = xy.min(0)
        x1, y1 = xy.max(0)
        pad = rng.uniform(0, 10)
        r["bbox"] = [float(x0 - pad), float(y0 - pad), float(x1 - x0 + 2 * pad), float(y1 - y0 + 2 * pad)]
    return r
