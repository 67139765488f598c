"""QueryPose outputs -> people (spec 7): pose scores and keypoints in input pixels from the last stage, the map
to original pixels with score threshold / top-k, and the flip test (ours; the official code has none, spec 0.6).
No NMS: the set prediction returns one proposal per person."""
from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_iou

from ...codecs.multiscale import resolve_test_scales
from ...codecs.onestage import decode_boxes, decode_keypoints
from ...structures import PoseResult
from ...data.keypoints import KeypointMeta
from .config import flip_permutation
from .transform import MULTI_SCALE

__all__ = ["final_outputs", "predict", "to_result", "flip_images", "unflip", "fuse_flip"]


def final_outputs(logits: torch.Tensor, boxes: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> dict:
    """Spec 7: pose score = sigmoid(logit) * mean_k mean_c (1 - sigma); keypoints to input pixels with the
    unclipped box. (B, N, ...) in, (B, N, ...) out."""
    kp_score = (1 - sigma).mean(-1)                                    # (B, N, K)
    prob = logits[..., 0].sigmoid()
    wh = (boxes[..., 2:] - boxes[..., :2])[:, :, None, :]              # (B, N, 1, 2)
    xy = (mu + 0.5) * wh + boxes[:, :, None, :2]
    return {"scores": prob * kp_score.mean(-1), "logits": logits[..., 0], "boxes": boxes,
            "keypoints": torch.cat([xy, kp_score[..., None]], dim=-1), "sigma": sigma}


@torch.no_grad()
def predict(model, batch: dict, test_cfg) -> list[PoseResult]:
    """One :class:`PoseResult` per image of ``batch`` in original pixels (``test_cfg.flip`` fuses the mirrored
    image's people). One scale only: the official code has no multi-scale test."""
    resolve_test_scales(test_cfg, "querypose", MULTI_SCALE)
    images = batch["images"]
    metas = batch["metas"]
    sizes = torch.tensor([list(m["input_hw"]) for m in metas], device=images.device)
    out = model(images, image_sizes=sizes)
    if getattr(test_cfg, "flip", False):
        flipped = model(flip_images(images, sizes), image_sizes=sizes)
        out = fuse_flip(out, unflip(flipped, sizes, model.keypoints), model.cfg.flip_fusion_iou)
    return [to_result(out, i, metas[i], test_cfg) for i in range(len(metas))]


def to_result(out: dict, i: int, meta: dict, test_cfg) -> PoseResult:
    """Spec 7 / detector_postprocess: image ``i`` of ``out`` mapped to original pixels, boxes clipped, empty ones
    dropped (keypoints are not clipped), keypoints back to COCO pixel indices (the official json export's -0.5),
    sorted by score, ``test_cfg.score_threshold`` / ``max_people`` applied."""
    boxes = decode_boxes(out["boxes"][i], meta["inverse"])             # continuous, as detectron2's
    scores = out["scores"][i].double()
    oh, ow = meta["orig_size"]
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, ow)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, oh)
    k3 = decode_keypoints(out["keypoints"][i], meta["inverse"])        # pixel indices (COCO json frame)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    keep &= scores > getattr(test_cfg, "score_threshold", 0.0)
    order = torch.argsort(scores[keep], descending=True, stable=True)[: getattr(test_cfg, "max_people", 100)]
    idx = keep.nonzero()[:, 0][order]
    pidx = out["proposal_index"][i] if "proposal_index" in out else torch.arange(len(scores))
    extras = {"proposal_index": pidx[idx].cpu().numpy()}
    return PoseResult(boxes[idx].float().cpu().numpy(), k3[idx].float().cpu().numpy(),
                      scores[idx].float().cpu().numpy(), extras)


def flip_images(images: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """Mirror each image inside its own unpadded width (padding stays on the right)."""
    w_pad = images.shape[-1]
    col = torch.arange(w_pad, device=images.device)[None]              # (1, W)
    w = sizes[:, 1:2].to(col)                                          # (B, 1)
    src = torch.where(col < w, w - 1 - col, col)                       # (B, W)
    return images.gather(3, src[:, None, None, :].expand_as(images))


def unflip(out: dict, sizes: torch.Tensor, keypoints: KeypointMeta) -> dict:
    """Predictions on mirrored images -> the original frame (x -> w - x, left/right keypoints swapped)."""
    w = sizes[:, 1].to(out["boxes"].dtype)[:, None]                   # (B, 1)
    boxes = torch.stack([w - out["boxes"][..., 2], out["boxes"][..., 1], w - out["boxes"][..., 0],
                         out["boxes"][..., 3]], dim=-1)
    perm = flip_permutation(keypoints).to(out["keypoints"].device)
    kp = out["keypoints"][:, :, perm]
    kp = torch.cat([w[..., None, None] - kp[..., :1], kp[..., 1:]], dim=-1)
    res = dict(out)
    res.update(boxes=boxes, keypoints=kp, sigma=out["sigma"][:, :, perm])
    return res


def fuse_flip(out: dict, unflipped: dict, min_iou: float) -> dict:
    """Average each person with its mirrored-image counterpart (one-to-one Hungarian matching on box IoU
    >= ``min_iou``, ``flip_fusion_iou``); unmatched people keep their own prediction."""
    fused = {k: v.clone() for k, v in out.items()}
    for b in range(out["boxes"].shape[0]):
        iou = box_iou(out["boxes"][b], unflipped["boxes"][b])
        rows, cols = linear_sum_assignment((-iou).cpu().numpy())
        rows, cols = torch.as_tensor(rows), torch.as_tensor(cols)
        ok = iou[rows, cols] >= min_iou
        r, c = rows[ok], cols[ok]
        for key in ("scores", "boxes", "keypoints", "sigma"):
            fused[key][b, r] = 0.5 * (out[key][b, r] + unflipped[key][b, c])
    return fused
