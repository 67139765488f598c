"""COCO-style keypoint AP/AR (COCO, OCHuman, CrowdPose), vectorised, equal to the reference tools.

Three protocols, each reproducing one reference implementation statistic for statistic:
  * ``coco``: pycocotools ``COCOeval(iouType='keypoints')``;
  * ``ochuman``: xtcocotools ``COCOeval(iouType='keypoints')`` as mmpose evaluates OCHuman (results whose
    keypoint scores are all <= 0 are dropped; a GT is ignored when no keypoint is labelled);
  * ``crowdpose``: xtcocotools ``COCOeval(iouType='keypoints_crowd', use_area=False)`` (CrowdPose sigmas, OKS
    scale = 0.53 x box area, AP easy/medium/hard by crowdIndex < 0.2 / < 0.8 / rest, rounded to 4 decimals).

The reference tools loop in Python over images, detections and ground truths; here the per-image greedy matching
runs for every image, area range and OKS threshold at once (a loop over the <= 20 detection ranks only), and
the accumulation is one sort per (category, area range). Semantics kept on purpose: detections sorted by score
with stable ties, at most 20 per image, ground truths matched greedily to the highest OKS (ties: the later one),
crowd ground truths matchable repeatedly, unmatched detections outside an area range ignored, the -1 of empty
settings, and the result area taken from the box when the first result has one (``loadRes``).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..jsonio import non_finite, read_json
from ..data.keypoints import COCO_SIGMAS, CROWDPOSE_SIGMAS
from .oks import oks_core

__all__ = ["COCO_KEYS", "CROWDPOSE_KEYS", "Protocol", "PROTOCOLS", "evaluate_coco", "evaluate_loaded", "load_gt",
           "load_results", "KeypointEvaluator"]

COCO_KEYS = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
CROWDPOSE_KEYS = ("AP", "AP50", "AP75", "AR", "AR50", "AR75", "AP_easy", "AP_medium", "AP_hard")

# Reference parameters (pycocotools Params.setKpParams).
IOU_THRS = np.linspace(.5, 0.95, int(np.round((0.95 - .5) / .05)) + 1, endpoint=True)
REC_THRS = np.linspace(.0, 1.00, int(np.round((1.00 - .0) / .01)) + 1, endpoint=True)
AREA_RNG = np.array([[0 ** 2, 1e5 ** 2], [32 ** 2, 96 ** 2], [96 ** 2, 1e5 ** 2]], dtype=np.float64)
AREA_LBL = ("all", "medium", "large")
MAX_DET = 20


@dataclass(frozen=True)
class Protocol:
    name: str
    sigmas: np.ndarray
    use_area: bool               # False: OKS scale and area ranges use 0.53 x box area (CrowdPose)
    ignore_by_field: bool        # True: GT ignored if num_keypoints == 0 (field); False: if no v > 0
    drop_zero_score: bool        # xtcocotools: results with every keypoint score <= 0 are dropped
    zero_id_unmatched: bool      # pycocotools: a match to a GT whose id is 0 counts as no match
    crowd_summary: bool          # CrowdPose statistics (easy / medium / hard)
    keys: tuple


PROTOCOLS = {
    "coco": Protocol("coco", COCO_SIGMAS, True, True, False, True, False, COCO_KEYS),
    "ochuman": Protocol("ochuman", COCO_SIGMAS, True, False, True, False, False, COCO_KEYS),
    "crowdpose": Protocol("crowdpose", CROWDPOSE_SIGMAS, False, True, True, False, True, CROWDPOSE_KEYS),
}


# ==========================================================================================================
# Loading and validation
# ==========================================================================================================
#: keypoints per person of each dataset evaluate() knows (MPII: PCKh, regpose.evaluation.pckh)
_NUM_KEYPOINTS = {**{n: len(p.sigmas) for n, p in PROTOCOLS.items()}, "mpii": 16}


def layout_hint(keypoints, dataset: str) -> str:
    """The usual cause of a wrong keypoint count: a file of another dataset's layout evaluated as ``dataset``
    (e.g. CrowdPose results, 14 x 3 = 42 values, without ``--dataset crowdpose``). '' when no layout fits."""
    if not isinstance(keypoints, (list, tuple)) or len(keypoints) % 3:
        return ""
    fits = [n for n, k in _NUM_KEYPOINTS.items() if k == len(keypoints) // 3 and n != dataset]
    if not fits:
        return ""
    return (f"; {len(keypoints) // 3} keypoints is the {' / '.join(fits)} layout: evaluate with --dataset {fits[0]} "
            f"(Python: dataset='{fits[0]}')")

def load_gt(gt) -> tuple[dict, str]:
    """Ground truth as a COCO dict and a name for messages (path or '<ground truth>')."""
    if isinstance(gt, (str, os.PathLike)):
        p = Path(gt).expanduser()
        data, name = read_json(p, "ground-truth"), str(p)
    else:
        data, name = gt, "<ground truth>"
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations") or [], list):
        raise DataError(f"{name}: expected a COCO keypoint json with lists 'images' and 'annotations'")
    if not data.get("annotations"):
        raise DataError(f"{name}: has no annotations to evaluate against (a test-dev file?)")
    for what, key, entries in (("image", "id", data["images"]), ("annotation", "image_id", data["annotations"])):
        bad = next((i for i, e in enumerate(entries) if not isinstance(e, dict) or key not in e), None)
        if bad is not None:
            raise DataError(f"{name}: {what} entry {bad} is not an object with '{key}' ({entries[bad]!r:.60})")
    return data, name


def load_results(results) -> tuple[list, str]:
    if isinstance(results, (str, os.PathLike)):
        p = Path(results).expanduser()
        data, name = read_json(p, "results"), str(p)
    else:
        data, name = results, "<results>"
    if not isinstance(data, list):
        raise DataError(f"{name}: expected a list of COCO keypoint results "
                        f"{{image_id, category_id, keypoints: [x, y, score] * K, score}}")
    return data, name


class _GT:
    """Ground-truth arrays in file order."""

    def __init__(self, data: dict, name: str, proto: Protocol):
        k = len(proto.sigmas)
        imgs = data["images"]
        self.img_ids = np.unique(np.asarray([im["id"] for im in imgs], dtype=np.int64))
        cats = [c["id"] for c in data.get("categories") or []]
        anns_all = data["annotations"]
        if not cats:
            cats = sorted({a.get("category_id", 1) for a in anns_all})
        self.cat_ids = np.unique(np.asarray(cats, dtype=np.int64))
        img_set, cat_set = set(self.img_ids.tolist()), set(self.cat_ids.tolist())
        anns = [a for a in anns_all if a.get("image_id") in img_set and a.get("category_id") in cat_set]
        n = len(anns)
        try:
            kp = np.asarray([a["keypoints"] for a in anns], dtype=np.float64).reshape(n, -1)
            if kp.shape[1] != 3 * k:
                raise ValueError
        except (KeyError, ValueError, TypeError):
            for i, a in enumerate(anns):
                v = a.get("keypoints")
                if v is None or len(v) != 3 * k:
                    raise DataError(f"{name}: annotation {a.get('id', i)} has "
                                    f"{'no' if v is None else len(v)} keypoint values, expected {3 * k} "
                                    f"({k} keypoints x 3) for {proto.name}{layout_hint(v, proto.name)}") from None
            raise DataError(f"{name}: keypoints are not numbers") from None
        self.kpts = kp.reshape(n, k, 3)
        try:
            self.bbox = np.asarray([a["bbox"] for a in anns], dtype=np.float64).reshape(n, 4)
        except (KeyError, ValueError):
            bad = next(i for i, a in enumerate(anns) if len(a.get("bbox") or []) != 4)
            raise DataError(f"{name}: annotation {anns[bad].get('id', bad)} lacks a valid 'bbox' [x, y, w, h]") from None
        # A NaN / inf on a labelled joint or a box would make every OKS with that person NaN: no match, silently.
        labelled = self.kpts[..., 2] > 0
        bad = ~np.isfinite(self.kpts[..., 2]) | (labelled[..., None] & ~np.isfinite(self.kpts[..., :2])).any(-1)
        bad = bad.any(1) | ~np.isfinite(self.bbox).all(1)
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(f"{name}: annotation {anns[i].get('id', i)} (image_id {anns[i].get('image_id')}): "
                            f"labelled keypoints or bbox contain NaN or infinity")
        box_area = self.bbox[:, 2] * self.bbox[:, 3] * 0.53
        has_area = np.asarray(["area" in a for a in anns], dtype=bool)
        ann_area = np.asarray([a.get("area", 0.0) for a in anns], dtype=np.float64)
        if proto.use_area:
            self.oks_area = np.where(has_area, ann_area, box_area)
            self.rng_area = self.oks_area
        else:
            self.oks_area = box_area
            self.rng_area = box_area
        self.crowd = np.asarray([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)
        nvis = np.count_nonzero(self.kpts[..., 2] > 0, axis=1)
        if proto.ignore_by_field:
            nk = np.asarray([a.get("num_keypoints", -1) for a in anns], dtype=np.int64)
            nk = np.where(nk < 0, nvis, nk)
            self.ignore = self.crowd | (nk == 0)
        else:
            self.ignore = self.crowd | (nvis == 0)
        self.ids = np.asarray([a.get("id", i + 1) for i, a in enumerate(anns)], dtype=np.int64)
        self.img = np.searchsorted(self.img_ids, np.asarray([a["image_id"] for a in anns], dtype=np.int64))
        self.cat = np.searchsorted(self.cat_ids, np.asarray([a["category_id"] for a in anns], dtype=np.int64))
        ci = {im["id"]: im.get("crowdIndex") for im in imgs}
        self.crowd_index = np.asarray([np.nan if ci.get(i) is None else float(ci[i]) for i in self.img_ids.tolist()])


class _DT:
    """Result arrays in file order (validated)."""

    def __init__(self, res: list, name: str, gt: _GT, proto: Protocol):
        k = len(proto.sigmas)
        n = len(res)
        default_cat = int(gt.cat_ids[0]) if len(gt.cat_ids) == 1 else None
        try:
            img = np.asarray([r["image_id"] for r in res], dtype=np.int64)
            kp = np.asarray([r["keypoints"] for r in res], dtype=np.float64).reshape(n, -1) if n \
                else np.zeros((0, 3 * k))
            score = np.asarray([r["score"] for r in res], dtype=np.float64)
            if default_cat is not None:
                cat = np.asarray([r.get("category_id", default_cat) for r in res], dtype=np.int64)
            else:
                cat = np.asarray([r["category_id"] for r in res], dtype=np.int64)
            if n and kp.shape[1] != 3 * k:
                raise ValueError
        except (KeyError, ValueError, TypeError):
            self._explain(res, name, k, proto, default_cat)
            raise DataError(f"{name}: malformed results") from None
        bad = ~np.isfinite(kp).all(1) | ~np.isfinite(score)
        if bad.any():
            i = int(np.argmax(bad))
            what = "keypoints contain" if not np.isfinite(kp[i]).all() else "score is"
            raise DataError(f"{name}: entry {i} (image_id {img[i]}): {what} "
                            f"{non_finite(res[i][what.split()[0]])} (finite numbers expected)")
        known = np.isin(img, gt.img_ids)
        if not known.all():
            i = int(np.argmin(known))
            raise DataError(f"{name}: entry {i}: image_id {img[i]} is not in the ground truth")
        self.kpts = kp.reshape(n, k, 3)
        # pycocotools loadRes: the first result decides whether the area comes from 'bbox' or the keypoint extent.
        if n and "bbox" in res[0] and len(res[0]["bbox"] or []) != 0:
            try:
                bb = np.asarray([r["bbox"] for r in res], dtype=np.float64).reshape(n, 4)
            except (KeyError, ValueError, TypeError):
                i = next(i for i, r in enumerate(res) if len(r.get("bbox") or []) != 4)
                raise DataError(f"{name}: entry {i} has no 4-value 'bbox' while entry 0 has one (the area of every "
                                f"result then comes from its box)") from None
            self.area = bb[:, 2] * bb[:, 3]
        else:
            x, y = self.kpts[..., 0], self.kpts[..., 1]
            self.area = (x.max(1) - x.min(1)) * (y.max(1) - y.min(1)) if n else np.zeros(0)
        keep = np.isin(cat, gt.cat_ids)
        if proto.drop_zero_score:
            keep &= (self.kpts[..., 2] > 0).any(1)
        self.index = np.nonzero(keep)[0]          # row -> entry of the results list (error analysis edits them)
        self.kpts, self.area, self.score = self.kpts[keep], self.area[keep], score[keep]
        self.img = np.searchsorted(gt.img_ids, img[keep])
        self.cat = np.searchsorted(gt.cat_ids, cat[keep])

    @staticmethod
    def _explain(res, name, k, proto, default_cat):
        for i, r in enumerate(res):
            if not isinstance(r, dict):
                raise DataError(f"{name}: entry {i} is not an object")
            for key in ("image_id", "keypoints", "score") + (() if default_cat is not None else ("category_id",)):
                if key not in r:
                    raise DataError(f"{name}: entry {i} lacks '{key}'")
            v = r["keypoints"]
            if not isinstance(v, (list, tuple)) or len(v) != 3 * k:
                got = len(v) if isinstance(v, (list, tuple)) else type(v).__name__
                raise DataError(f"{name}: entry {i} (image_id {r['image_id']}): expected {3 * k} keypoint values "
                                f"({k} keypoints x 3) for {proto.name}, got {got}{layout_hint(v, proto.name)}")
            try:
                np.asarray(v, dtype=np.float64)
                float(r["score"])
                int(r["image_id"])
            except (TypeError, ValueError):
                raise DataError(f"{name}: entry {i}: image_id, keypoints and score must be numbers") from None


# ==========================================================================================================
# Evaluation
# ==========================================================================================================
def _group_starts(sorted_units: np.ndarray, n_units: int) -> tuple[np.ndarray, np.ndarray]:
    counts = np.bincount(sorted_units, minlength=n_units)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return counts, starts


class KeypointEvaluator:
    """Per-image matching for all images at once; :meth:`accumulate` then scores any subset of images."""

    def __init__(self, gt: _GT, dt: _DT, proto: Protocol):
        self.gt, self.proto = gt, proto
        n_img, n_cat = len(gt.img_ids), len(gt.cat_ids)
        self.n_units = n_units = n_img * n_cat
        t_n, a_n = len(IOU_THRS), len(AREA_RNG)
        var = (proto.sigmas * 2) ** 2

        # Ground truths by unit (category-major, then image), file order inside a unit.
        g_unit = gt.cat * n_img + gt.img
        g_ord = np.lexsort((np.arange(len(g_unit)), g_unit))
        g_unit_s = g_unit[g_ord]
        g_cnt, g_start = _group_starts(g_unit_s, n_units)
        g_rng_area = gt.rng_area[g_ord]
        g_out = (g_rng_area[None] < AREA_RNG[:, :1]) | (g_rng_area[None] > AREA_RNG[:, 1:])   # (A, G)
        self.g_ig = gt.ignore[g_ord][None] | g_out                                            # (A, G)
        self.g_unit = g_unit_s

        # Detections by unit, score-descending (stable), at most MAX_DET per unit.
        d_unit = dt.cat * n_img + dt.img
        d_ord = np.lexsort((np.arange(len(d_unit)), -dt.score, d_unit))
        d_unit_s = d_unit[d_ord]
        d_cnt0, d_start0 = _group_starts(d_unit_s, n_units)
        rank = np.arange(len(d_ord)) - d_start0[d_unit_s]
        keep = rank < MAX_DET
        d_ord, d_unit_s, rank = d_ord[keep], d_unit_s[keep], rank[keep]
        d_cnt, d_start = _group_starts(d_unit_s, n_units)
        self.d_unit, self.d_score = d_unit_s, dt.score[d_ord]
        d_area = dt.area[d_ord]
        d_out = (d_area[None] < AREA_RNG[:, :1]) | (d_area[None] > AREA_RNG[:, 1:])            # (A, D)
        nd = len(d_ord)
        matched = np.zeros((a_n, t_n, nd), bool)
        match_ig = np.zeros((a_n, t_n, nd), bool)

        both = np.nonzero((g_cnt > 0) & (d_cnt > 0))[0]
        if len(both):
            # Bucket units by padded GT count (powers of two) to bound padding.
            gp = 1 << np.ceil(np.log2(np.maximum(g_cnt[both], 1))).astype(np.int64)
            for size in np.unique(gp):
                units = both[gp == size]
                dmax = int(d_cnt[units].max())
                # Chunk so the (U, D, G, K) OKS intermediates stay small.
                step = max(1, int(1_000_000 // max(1, dmax * size * len(var))))
                for c0 in range(0, len(units), step):
                    self._match_bucket(units[c0:c0 + step], int(size), dmax, g_ord, g_start, g_cnt, d_ord, d_start,
                                       d_cnt, dt, var, matched, match_ig)
        # pycocotools: unmatched (dtm == 0) detections outside the area range are ignored.
        self.d_matched = matched
        self.d_ig = match_ig | (~matched & d_out[:, None, :])
        self.g_cnt = g_cnt

    def _match_bucket(self, units, gsize, dmax, g_ord, g_start, g_cnt, d_ord, d_start, d_cnt, dt, var, matched,
                      match_ig):
        gt, proto = self.gt, self.proto
        u_n = len(units)
        # Padded index tables (-1 = padding).
        gi = g_start[units][:, None] + np.arange(gsize)[None]                     # (U, G) positions in sorted gts
        gvalid = np.arange(gsize)[None] < g_cnt[units][:, None]
        di = d_start[units][:, None] + np.arange(dmax)[None]                      # (U, D) positions in sorted dts
        dvalid = np.arange(dmax)[None] < d_cnt[units][:, None]
        gi = np.where(gvalid, gi, 0)
        di = np.where(dvalid, di, 0)
        gsrc = g_ord[gi]                                                          # original gt indices
        dsrc = d_ord[di]
        gk = gt.kpts[gsrc]                                                        # (U, G, K, 3)
        dk = dt.kpts[dsrc]                                                        # (U, D, K, 3)
        ious = oks_core(dk[:, :, None, :, 0], dk[:, :, None, :, 1], gk[:, None, :, :, 0], gk[:, None, :, :, 1],
                        gk[:, None, :, :, 2], gt.oks_area[gsrc][:, None], gt.bbox[gsrc][:, None], var)  # (U, D, G)
        ious = np.where(gvalid[:, None, :] & dvalid[:, :, None], ious, -np.inf)

        a_n, t_n = len(AREA_RNG), len(IOU_THRS)
        thr = np.minimum(IOU_THRS, 1 - 1e-10)                                    # (T,)
        g_ig = np.where(gvalid[None], self.g_ig[:, gi], True)                    # (A, U, G)
        crowd = gt.crowd[gsrc] & gvalid                                          # (U, G)
        gid_zero = (gt.ids[gsrc] == 0) if proto.zero_id_unmatched else np.zeros_like(crowd)
        taken = np.zeros((a_n, u_n, t_n, gsize), bool)
        rev = slice(None, None, -1)
        a_idx = np.arange(a_n)[:, None, None]
        u_idx = np.arange(u_n)[None, :, None]
        t_idx = np.arange(t_n)[None, None, :]
        for d in range(dmax):
            iou = ious[:, d, :][None, :, None, :]                                # (1, U, 1, G)
            cand = (~taken | crowd[None, :, None, :]) & (iou >= thr[None, None, :, None])
            nonig = cand & ~g_ig[:, :, None, :]
            # The scan prefers regular GTs: it stops at the first ignored GT once a regular one matched.
            pool = np.where(nonig.any(-1, keepdims=True), nonig, cand)
            vals = np.where(pool, iou, -np.inf)
            best = vals.max(-1, keepdims=True)
            hit = pool & (vals == best)
            m = gsize - 1 - np.argmax(hit[..., rev], axis=-1)                   # last GT with the best OKS
            ok = pool.any(-1) & dvalid[None, :, None, d]                        # (A, U, T)
            taken[a_idx, u_idx, t_idx, m] |= ok
            pos = di[:, d]                                                       # (U,) positions in kept dts
            is_ig = np.take_along_axis(np.broadcast_to(g_ig[:, :, None, :], taken.shape), m[..., None], -1)[..., 0]
            zero = gid_zero[np.arange(u_n)[None, :, None], m]
            sel = dvalid[:, d]
            a_i, u_i, t_i = np.nonzero(np.broadcast_to(sel[None, :, None], ok.shape))
            matched[a_i, t_i, pos[u_i]] = (ok & ~zero)[a_i, u_i, t_i]
            match_ig[a_i, t_i, pos[u_i]] = (ok & is_ig)[a_i, u_i, t_i]

    def accumulate(self, image_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """precision (T, R, K, A) and recall (T, K, A) over the images in ``image_mask`` (all by default)."""
        gt = self.gt
        n_img, n_cat = len(gt.img_ids), len(gt.cat_ids)
        t_n, r_n, a_n = len(IOU_THRS), len(REC_THRS), len(AREA_RNG)
        precision = -np.ones((t_n, r_n, n_cat, a_n))
        recall = -np.ones((t_n, n_cat, a_n))
        img_ok = np.ones(n_img, bool) if image_mask is None else np.asarray(image_mask, bool)
        g_sel_all = img_ok[self.g_unit % n_img]
        d_sel_all = img_ok[self.d_unit % n_img]
        for k in range(n_cat):
            g_sel = g_sel_all & (self.g_unit // n_img == k)
            d_sel = np.nonzero(d_sel_all & (self.d_unit // n_img == k))[0]
            if not g_sel.any() and len(d_sel) == 0:
                continue
            order = d_sel[np.argsort(-self.d_score[d_sel], kind="mergesort")]
            nd = len(order)
            for a in range(a_n):
                npig = int(np.count_nonzero(~self.g_ig[a][g_sel]))
                if npig == 0:
                    continue
                if nd == 0:
                    recall[:, k, a] = 0
                    precision[:, :, k, a] = 0
                    continue
                m = self.d_matched[a][:, order]
                ig = self.d_ig[a][:, order]
                tp = np.cumsum(m & ~ig, axis=1).astype(np.float64)
                fp = np.cumsum(~m & ~ig, axis=1).astype(np.float64)
                rc = tp / npig
                pr = tp / (fp + tp + np.spacing(1))
                recall[:, k, a] = rc[:, -1]
                pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
                for t in range(t_n):
                    idx = np.searchsorted(rc[t], REC_THRS, side="left")
                    precision[t, :, k, a] = np.where(idx < nd, pr[t, np.minimum(idx, nd - 1)], 0.0)
        return precision, recall


def _summarize(precision, recall, ap: bool, iou_thr=None, area="all") -> float:
    a = AREA_LBL.index(area)
    s = precision if ap else recall
    if iou_thr is not None:
        s = s[np.where(iou_thr == IOU_THRS)[0]]
    s = s[..., a]
    valid = s[s > -1]
    return float(np.mean(valid)) if len(valid) else -1.0


def evaluate_coco(gt, results, dataset: str = "coco", sigmas=None) -> dict[str, float]:
    """AP/AR of keypoint ``results`` (path or list of COCO results) against ``gt`` (path or dict) with ``dataset``'s
    protocol; ``sigmas``: the OKS constants of another keypoint layout (K values; None: the dataset's own), as
    pycocotools' ``params.kpt_oks_sigmas`` sets them."""
    if dataset not in PROTOCOLS:
        raise DataError(f"unknown dataset {dataset!r} for OKS evaluation (expected coco, crowdpose or ochuman)")
    proto = PROTOCOLS[dataset]
    if sigmas is not None:
        proto = dataclasses.replace(proto, name=f"{proto.name} with the layout's sigmas",
                                    sigmas=np.asarray(sigmas, dtype=np.float64).reshape(-1))
    gdata, gname = load_gt(gt)
    res, rname = load_results(results)
    g = _GT(gdata, gname, proto)
    return evaluate_loaded(g, _DT(res, rname, g, proto), proto, gname)


def evaluate_loaded(g: _GT, d: _DT, proto: Protocol, gt_name: str) -> dict[str, float]:
    """The protocol's statistics of loaded, validated ground truth and results (``gt_name`` for messages)."""
    ev = KeypointEvaluator(g, d, proto)
    p, r = ev.accumulate()
    stats = [_summarize(p, r, True), _summarize(p, r, True, .5), _summarize(p, r, True, .75)]
    if not proto.crowd_summary:
        stats += [_summarize(p, r, True, area="medium"), _summarize(p, r, True, area="large"),
                  _summarize(p, r, False), _summarize(p, r, False, .5), _summarize(p, r, False, .75),
                  _summarize(p, r, False, area="medium"), _summarize(p, r, False, area="large")]
    else:
        stats += [_summarize(p, r, False), _summarize(p, r, False, .5), _summarize(p, r, False, .75)]
        ci = g.crowd_index
        if np.isnan(ci).any():
            missing = g.img_ids[np.isnan(ci)][0]
            raise DataError(f"{gt_name}: image {missing} has no 'crowdIndex' (needed for CrowdPose AP "
                            f"easy/medium/hard)")
        for mask in (ci < 0.2, (ci >= 0.2) & (ci < 0.8), ci >= 0.8):
            pt, _ = ev.accumulate(mask)
            stats.append(round(float(np.mean(pt[:, :, :, 0])), 4))
    return {key: float(v) for key, v in zip(proto.keys, stats)}
