"""Where keypoint AP is lost: per-joint similarity, occlusion and size strata, and oracle ceilings.

``analyse_keypoint_errors(gt, results, dataset)`` matches every labelled ground truth to its best prediction in the
same image (highest OKS, as the evaluator computes it) and reports:

  * OKS of those matches (mean, share above 0.5 / 0.75 / 0.9) and per joint the mean per-point similarity
    exp(-d^2 / (2 s^2 k^2)) for visible (v = 2) and occluded (v = 1) labels, with the median error in units of
    sqrt(area);
  * the same OKS by stratum: people with every labelled keypoint visible vs. with occluded ones, by COCO size;
  * oracle ceilings, each the evaluator's AP after one error is removed from the results: joint k placed exactly
    (per joint), occluded keypoints placed exactly, and predictions ranked by their true OKS (the ranking error:
    how much a better keypoint / instance score could gain).

Diagnostics in the spirit of Ronchi & Perona's COCO keypoint analysis (ICCV 2017); the AP numbers come from
:func:`regpose.evaluation.evaluate_coco`, so they equal pycocotools / xtcocotools. ``regpose analyze`` prints it.
"""
from __future__ import annotations

import numpy as np

from ..data.keypoints import get_meta
from ..errors import DataError
from .coco import PROTOCOLS, _DT, _GT, evaluate_coco, evaluate_loaded, load_gt, load_results
from .oks import oks_core

__all__ = ["analyse_keypoint_errors", "format_analysis"]

_LAYOUT = {"coco": "coco", "ochuman": "coco", "crowdpose": "crowdpose"}


def _best_matches(gt: _GT, dt: _DT, var: np.ndarray):
    """For every ground truth: index of the best-OKS prediction in its image (-1 if none), that OKS, the per-point
    similarity (G, K) and the squared distances (G, K); for every prediction: its best labelled ground truth."""
    G, K = gt.kpts.shape[:2]
    D = len(dt.kpts)
    best_dt = np.full(G, -1, np.int64)
    best_oks = np.zeros(G)
    sim = np.zeros((G, K))
    d2 = np.full((G, K), np.nan)
    dt_gt = np.full(D, -1, np.int64)
    dt_oks = np.zeros(D)
    order_g, order_d = np.argsort(gt.img, kind="stable"), np.argsort(dt.img, kind="stable")
    g_starts = np.searchsorted(gt.img[order_g], np.arange(len(gt.img_ids) + 1))
    d_starts = np.searchsorted(dt.img[order_d], np.arange(len(gt.img_ids) + 1))
    for i in range(len(gt.img_ids)):                      # one image at a time; all pairs of an image at once
        gi = order_g[g_starts[i]:g_starts[i + 1]]
        gi = gi[~gt.ignore[gi]]
        di = order_d[d_starts[i]:d_starts[i + 1]]
        if len(gi) == 0 or len(di) == 0:
            continue
        g, d = gt.kpts[gi], dt.kpts[di]
        oks = oks_core(d[:, None, :, 0], d[:, None, :, 1], g[None, :, :, 0], g[None, :, :, 1], g[None, :, :, 2],
                       gt.oks_area[gi][None], gt.bbox[gi][None], var)                      # (D, G)
        j = oks.argmax(0)
        best_dt[gi], best_oks[gi] = di[j], oks[j, np.arange(len(gi))]
        dist2 = ((d[j, :, :2] - g[:, :, :2]) ** 2).sum(-1)                                  # (G, K)
        d2[gi] = dist2
        sim[gi] = np.exp(-dist2 / var / (gt.oks_area[gi][:, None] + np.spacing(1)) / 2)
        k = oks.argmax(1)
        dt_gt[di], dt_oks[di] = gi[k], oks[np.arange(len(di)), k]
    return best_dt, best_oks, sim, d2, dt_gt, dt_oks


def _edited(res: list, dt: _DT, kpts: np.ndarray, score: np.ndarray) -> list:
    """A copy of the results list with the evaluated entries' keypoints and scores replaced (everything else, e.g.
    a 'bbox' that decides the result area, kept)."""
    out = list(res)
    flat = kpts.reshape(len(kpts), -1)
    for n, i in enumerate(dt.index.tolist()):
        out[i] = {**res[i], "keypoints": flat[n].tolist(), "score": float(score[n])}
    return out


def analyse_keypoint_errors(gt, results, dataset: str = "coco") -> dict:
    """The report described in the module docstring as a JSON-ready dict (fractions; AP values as
    :func:`evaluate_coco` returns them)."""
    if dataset not in PROTOCOLS:
        raise DataError(f"error analysis supports {', '.join(PROTOCOLS)}, got {dataset!r}")
    gt_data, gt_name = load_gt(gt)
    res, res_name = load_results(results)
    proto = PROTOCOLS[dataset]
    g = _GT(gt_data, gt_name, proto)                         # validate both files, errors naming them
    d = _DT(res, res_name, g, proto)
    base = evaluate_loaded(g, d, proto, gt_name)
    var = (proto.sigmas * 2) ** 2
    names = get_meta(_LAYOUT[dataset]).keypoint_names
    best_dt, best_oks, sim, d2, dt_gt, dt_oks = _best_matches(g, d, var)

    people = ~g.ignore
    matched = people & (best_dt >= 0)
    v = g.kpts[..., 2]
    lab, vis, occ = (v > 0) & matched[:, None], (v == 2) & matched[:, None], (v == 1) & matched[:, None]
    err = np.sqrt(d2) / np.sqrt(g.oks_area + np.spacing(1))[:, None]

    def mean(x, m):
        return float(x[m].mean()) if m.any() else None

    # Oracles: each removes one kind of error from the results and re-evaluates.
    has = dt_gt >= 0
    target = g.kpts[np.maximum(dt_gt, 0)]                                               # (D, K, 3)

    def with_exact(mask_dk: np.ndarray) -> float:
        k = d.kpts.copy()
        m = mask_dk & has[:, None]
        k[..., :2] = np.where(m[..., None], target[..., :2], k[..., :2])
        return evaluate_coco(gt_data, _edited(res, d, k, d.score), dataset)["AP"]

    per_joint = {}
    for j, name in enumerate(names):
        per_joint[name] = {
            "labelled": int(lab[:, j].sum()),
            "similarity": mean(sim[:, j], lab[:, j]),
            "similarity_visible": mean(sim[:, j], vis[:, j]),
            "similarity_occluded": mean(sim[:, j], occ[:, j]),
            "median_error": float(np.median(err[lab[:, j], j])) if lab[:, j].any() else None,
            "AP_if_exact": with_exact((target[..., 2] > 0) & (np.arange(len(names)) == j)[None]),
        }
    all_visible = matched & ~((v == 1).any(1))
    with_occluded = matched & (v == 1).any(1)
    area = g.rng_area
    strata = {
        "all labelled keypoints visible": all_visible,
        "some keypoints occluded": with_occluded,
        "small (area < 32^2)": matched & (area < 32 ** 2),
        "medium (32^2..96^2)": matched & (area >= 32 ** 2) & (area < 96 ** 2),
        "large (> 96^2)": matched & (area >= 96 ** 2),
    }
    oks_m = best_oks[matched]
    ranked = evaluate_coco(gt_data, _edited(res, d, d.kpts, np.where(has, dt_oks, 0.0)), dataset)
    return {
        "dataset": dataset,
        "metrics": base,
        "people": int(people.sum()),
        "matched": int(matched.sum()),
        "oks": {"mean": float(oks_m.mean()) if len(oks_m) else None,
                **{f">={t}": float((oks_m >= t).mean()) if len(oks_m) else None for t in (0.5, 0.75, 0.9)}},
        "per_joint": per_joint,
        "strata": {k: {"people": int(m.sum()), "mean_oks": mean(best_oks, m),
                       ">=0.75": mean(best_oks >= 0.75, m)} for k, m in strata.items()},
        "ceilings": {"AP": base["AP"],
                     "occluded keypoints exact": with_exact(target[..., 2] == 1),
                     "ranked by true OKS": ranked["AP"],
                     "AR (for comparison)": base["AR"]},
    }


def format_analysis(rep: dict) -> str:
    """Plain-text tables of :func:`analyse_keypoint_errors`'s report."""
    def f(x, p=3):
        return "-" if x is None else f"{x:.{p}f}"

    o = rep["oks"]
    lines = [f"{rep['dataset']}: {rep['matched']} of {rep['people']} labelled people have a prediction; "
             f"their best OKS: mean {f(o['mean'])}, >=0.5 {f(o['>=0.5'])}, >=0.75 {f(o['>=0.75'])}, "
             f">=0.9 {f(o['>=0.9'])}", "",
             f"{'joint':<16}{'labelled':>9}{'similarity':>11}{'visible':>9}{'occluded':>9}{'median err':>11}"
             f"{'AP if exact':>12}"]
    for name, r in rep["per_joint"].items():
        lines.append(f"{name:<16}{r['labelled']:>9}{f(r['similarity']):>11}{f(r['similarity_visible']):>9}"
                     f"{f(r['similarity_occluded']):>9}{f(r['median_error']):>11}{f(r['AP_if_exact']):>12}")
    lines += ["", f"{'people':<32}{'n':>6}{'mean OKS':>10}{'>=0.75':>8}"]
    for name, r in rep["strata"].items():
        lines.append(f"{name:<32}{r['people']:>6}{f(r['mean_oks']):>10}{f(r['>=0.75']):>8}")
    lines += ["", "AP ceilings (one error removed):"]
    lines += [f"  {k:<30}{f(v)}" for k, v in rep["ceilings"].items()]
    return "\n".join(lines)
