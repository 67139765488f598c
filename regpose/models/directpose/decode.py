"""DirectPose outputs -> people (spec §7): per-level thresholding and top-k of the candidate locations, one
class-agnostic NMS over the pooled (scale, flip) variants, and the map to original pixels."""
from __future__ import annotations

import numpy as np
import torch
from torchvision.ops import batched_nms

from ...codecs.multiscale import resolve_test_scales
from ...codecs.onestage import decode_boxes, decode_keypoints, rescale_batch
from ...structures import PoseResult
from .config import DirectPoseConfig
from .transform import MULTI_SCALE

__all__ = ["decode_candidates", "predict", "to_original"]


def decode_candidates(out: dict, index: int, image_hw: tuple[int, int], cfg: DirectPoseConfig) -> dict:
    """Per-level thresholding and top-k for image ``index`` of a raw eval output (before NMS).

    Keeps locations with sigmoid(cls) > pre_nms_thresh (before centerness), at most pre_nms_topk per level by
    cls x ctr; score = sqrt(cls x ctr). Returns scores (n,), keypoints (n, K, 3) in input pixels (third
    column: per-keypoint confidence = the instance score, or x sigmoid(visibility)) and NMS boxes (n, 4).
    """
    strides = out["strides"]
    cls = out["cls_logits"][index].sigmoid()
    ctr = out["ctr_logits"][index].sigmoid()
    # Level boundaries from the per-location strides (constant within a level, increasing across levels).
    _, counts = torch.unique_consecutive(strides, return_counts=True)
    keep_idx = []
    start = 0
    for cnt in counts.tolist():
        p = cls[start:start + cnt]
        cand = torch.nonzero(p > cfg.pre_nms_thresh).squeeze(1)
        if cand.numel() > cfg.pre_nms_topk:
            top = (p[cand] * ctr[start + cand]).topk(cfg.pre_nms_topk).indices
            cand = cand[top]
        keep_idx.append(cand + start)
        start += cnt
    idx = torch.cat(keep_idx)
    scores = torch.sqrt(cls[idx] * ctr[idx])
    kp = out["keypoints"][index, idx]                                       # (n, K, 2)
    conf = scores[:, None].expand(-1, kp.shape[1])
    if "kpt_vis_logits" in out:
        conf = conf * out["kpt_vis_logits"][index, idx].sigmoid()
    h, w = image_hw
    ext = torch.cat((kp.min(1).values, kp.max(1).values), 1)
    ext = torch.stack((ext[:, 0].clamp(0, w), ext[:, 1].clamp(0, h), ext[:, 2].clamp(0, w), ext[:, 3].clamp(0, h)), 1)
    boxes = ext
    if "boxes" in out:
        b = out["boxes"][index, idx]
        boxes = torch.stack((b[:, 0].clamp(0, w), b[:, 1].clamp(0, h), b[:, 2].clamp(0, w), b[:, 3].clamp(0, h)), 1)
    use_pred = cfg.nms_box == "box" or (cfg.nms_box == "auto" and "boxes" in out)
    return {"scores": scores, "keypoints": torch.cat((kp, conf[..., None]), 2),
            "nms_boxes": boxes if use_pred else ext, "boxes": boxes}


@torch.no_grad()
def predict(model, batch: dict, test_cfg) -> list[PoseResult]:
    """People per image in original pixels: candidates from every (scale, flip) variant are pooled, then one
    class-agnostic NMS (spec §7), top ``max_people``, then ``score_threshold``.

    Assumption (spec §7): the paper's multi-scale test merge rule is unknown; we pool all candidates and run
    one NMS. The flip test is our extension (the paper reports none); it is off by default.
    """
    images = batch["images"]
    metas = batch["metas"]
    N, _, H, W = images.shape
    scales = resolve_test_scales(test_cfg, "directpose", MULTI_SCALE)
    flips = [False, True] if getattr(test_cfg, "flip", False) else [False]
    sizes = [tuple(int(v) for v in m.get("input_hw", (H, W))) for m in metas]
    pooled: list[list[dict]] = [[] for _ in range(N)]
    for s in scales:
        x = rescale_batch(images, s)
        sy, sx = x.shape[-2] / H, x.shape[-1] / W
        for flip in flips:
            xin = x.flip(-1) if flip else x
            out = model(xin)
            for i in range(N):
                hw = (sizes[i][0] * sy, sizes[i][1] * sx)
                c = decode_candidates(out, i, hw, model.cfg)
                kp, boxes, nms_boxes = c["keypoints"], c["boxes"], c["nms_boxes"]
                if flip:
                    # Image flipped as a whole padded tensor: x -> W' - x, boxes swap x0/x1, left/right swap.
                    Wf = xin.shape[-1]
                    kp = kp[:, model.flip_index].clone()
                    kp[..., 0] = Wf - kp[..., 0]
                    boxes = torch.stack((Wf - boxes[:, 2], boxes[:, 1], Wf - boxes[:, 0], boxes[:, 3]), 1)
                    nms_boxes = torch.stack((Wf - nms_boxes[:, 2], nms_boxes[:, 1], Wf - nms_boxes[:, 0],
                                             nms_boxes[:, 3]), 1)
                sc = torch.tensor([sx, sy, sx, sy], dtype=kp.dtype, device=kp.device)
                kp = kp.clone()
                kp[..., :2] = kp[..., :2] / sc[:2]
                pooled[i].append({"scores": c["scores"], "keypoints": kp, "boxes": boxes / sc,
                                  "nms_boxes": nms_boxes / sc})
    results = []
    max_people = int(getattr(test_cfg, "max_people", 100))
    thr = float(getattr(test_cfg, "score_threshold", 0.0))
    for i in range(N):
        cat = {k: torch.cat([p[k] for p in pooled[i]]) for k in pooled[i][0]}
        keep = batched_nms(cat["nms_boxes"], cat["scores"], torch.zeros_like(cat["scores"], dtype=torch.long),
                           model.cfg.nms_iou)[:max_people]
        keep = keep[cat["scores"][keep] > thr] if thr > 0 else keep
        results.append(to_original(cat["keypoints"][keep], cat["boxes"][keep], cat["scores"][keep], metas[i]))
    return results


def to_original(kp: torch.Tensor, boxes: torch.Tensor, scores: torch.Tensor, meta: dict) -> PoseResult:
    """Network-input continuous coordinates -> original pixels through meta['inverse'] (the one-stage codec's
    decoding: keypoints become pixel indices, boxes stay continuous)."""
    inverse = meta.get("inverse", np.eye(2, 3))
    return PoseResult(decode_boxes(boxes, inverse).float().cpu().numpy(),
                      decode_keypoints(kp, inverse).float().cpu().numpy(), scores.float().cpu().numpy())
