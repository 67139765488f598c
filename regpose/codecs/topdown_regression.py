"""Top-down regression codec (Poseur, RLE, TFPose): one person crop per sample, keypoints regressed as normalised
crop coordinates, decoded back to the image through the crop's affine.

  * test-time "resize": the mmpose crop (:func:`regpose.data.transforms.topdown_test_transforms`: centre / scale of
    the person box with padding 1.25, affine crop to ``data.input_size``; mmpose's default or UDP);
  * encoding: :func:`encode` - u = x / (W, H) (mmpose's default, Poseur spec §1.7) or x / (W - 1, H - 1) under UDP
    (TFPose spec §5), weight = labelled and inside the crop; :class:`TopDownRegressionTransform` runs the crop
    pipeline and the encoding (plus TFPose's auxiliary UDP heatmaps when asked);
  * decoding: :func:`decode_crops` - u -> crop pixels (no half-pixel shift, Poseur spec 1.4) -> image pixels via
    ``meta["inverse"]``, one :class:`~regpose.structures.PoseResult` per crop.

Whether a crop was made with UDP travels in ``meta["udp"]`` (set by the crop itself), so decoding always undoes
the encoding the sample had.
"""
from __future__ import annotations

import numpy as np
import torch

from ..data.targets import udp_heatmaps
from ..data.transforms import (make_meta, to_tensor_normalize, topdown_test_transforms, topdown_train_transforms,
                               transform_boxes)
from ..structures import PoseResult
from .multiscale import resolve_test_scales

__all__ = ["coordinate_scale", "encode", "to_crop_pixels", "crop_to_image", "decode_crops",
           "TopDownRegressionTransform", "topdown_transform"]


def coordinate_scale(input_wh, udp: bool) -> tuple[float, float]:
    """What normalised coordinates are multiplied by to give crop pixels: (W - 1, H - 1) under UDP, else (W, H)."""
    w, h = (float(v) for v in input_wh)
    return (w - 1.0, h - 1.0) if udp else (w, h)


def encode(keypoints: np.ndarray, input_size, udp: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One person's (K, 3) crop-pixel keypoints -> coordinate target u = x / :func:`coordinate_scale` and its weight
    per x and y = labelled (v > 0) and inside the crop (0 <= x <= W - 1, 0 <= y <= H - 1). (K, 2) float32 each."""
    kp = np.asarray(keypoints, dtype=np.float64)
    w, h = (int(v) for v in input_size)
    target = kp[..., :2] / np.array(coordinate_scale((w, h), udp), np.float64)
    inside = (kp[..., 0] >= 0) & (kp[..., 0] <= w - 1) & (kp[..., 1] >= 0) & (kp[..., 1] <= h - 1)
    weight = ((kp[..., 2] > 0) & inside).astype(np.float32)
    return target.astype(np.float32), np.repeat(weight[..., None], 2, axis=-1)


def to_crop_pixels(coords: torch.Tensor, input_hw: tuple[int, int], udp: bool) -> torch.Tensor:
    """Normalised (B, K, 2) -> crop pixels (the inverse of :func:`encode`'s scaling), in ``coords``' dtype."""
    scale = torch.tensor(coordinate_scale((input_hw[1], input_hw[0]), udp), dtype=coords.dtype, device=coords.device)
    return coords * scale


def crop_to_image(points: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """Crop pixels (B, K, 2) -> image pixels through per-sample (B, 2, 3) affines."""
    return torch.einsum("bij,bkj->bki", inverse[..., :2], points) + inverse[:, None, :, 2]


def _meta_array(metas: list[dict], key: str, default, dtype=np.float64) -> np.ndarray:
    return np.asarray([np.asarray(m.get(key, default), dtype=dtype) for m in metas], dtype=dtype)


def decode_crops(coords: torch.Tensor, score: torch.Tensor, metas: list[dict], input_hw: tuple[int, int],
                 extras: dict[str, torch.Tensor] | None = None) -> list[PoseResult]:
    """One single-person :class:`PoseResult` per crop: normalised coordinates (B, K, 2) -> crop pixels (float64,
    ``meta["udp"]`` picks the scaling) -> image pixels via ``meta["inverse"]``; keypoint scores ``score`` (B, K).
    The instance score is the mean keypoint score here (the methods' ``finalize`` rescores with the box score and
    runs OKS-NMS per image); ``extras`` (B, ...) tensors ride along per person."""
    h_in, w_in = input_hw
    inverse = torch.as_tensor(_meta_array(metas, "inverse", [[1, 0, 0], [0, 1, 0]]), dtype=torch.float64)
    udp = torch.tensor([bool(m.get("udp", False)) for m in metas])[:, None, None]
    c = coords.detach().double().cpu()
    pts = torch.where(udp, to_crop_pixels(c, input_hw, True), to_crop_pixels(c, input_hw, False))
    img = crop_to_image(pts, inverse).float().numpy()                                  # (B, K, 2)
    scores = score.detach().float().cpu().numpy()                                      # (B, K)
    keypoints = np.concatenate([img, scores[..., None]], axis=-1)
    box_score = _meta_array(metas, "box_score", 1.0, np.float32)
    scale = _meta_array(metas, "scale", [w_in / 200.0, h_in / 200.0])
    area = (scale[:, 0] * 200.0) * (scale[:, 1] * 200.0)                                 # mmpose boxes[:, 4]
    # The person box rides through the data transforms in network-input coordinates (meta["box"]); map it back.
    # Without one, the crop's extent is the box.
    crop_box = np.array([0.0, 0.0, w_in, h_in])
    boxes = np.stack([transform_boxes(np.asarray(m.get("box", crop_box), dtype=np.float64)[None],
                                      np.asarray(m.get("inverse", np.eye(3)[:2]), dtype=np.float64))[0]
                      for m in metas]) if len(metas) else np.zeros((0, 4))
    extra_np = {k: v.detach().float().cpu().numpy() for k, v in (extras or {}).items()}
    out = []
    for i in range(len(metas)):
        ex = {"box_score": box_score[i:i + 1], "area": area[i:i + 1].astype(np.float32)}
        ex.update({k: v[i:i + 1] for k, v in extra_np.items()})
        out.append(PoseResult(boxes[i:i + 1], keypoints[i:i + 1], scores[i:i + 1].mean(-1), ex))
    return out


class TopDownRegressionTransform:
    """Raw top-down sample -> ``{"image", "target", "meta"}``: the official mmpose / Poseur crop pipeline (spec
    1.1-1.7: centre / scale with padding 1.25, flip, half body, scale / rotation, affine crop - UDP with
    ``data.augment.topdown.udp`` - ImageNet normalisation of the RGB crop; ``data.augment.topdown``) and targets:

      coords (K, 2)          :func:`encode` (normalised, in [0, 1] inside the crop)
      coord_weights (K, 2)   labelled and inside the crop
      heatmaps (K, H/4, W/4) only with ``heatmap_sigma`` in training: UDP Gaussians (TFPose's auxiliary loss)
      heatmap_weights (K,)   labelled and the Gaussian touches the map

    Picklable for data-loader workers."""

    def __init__(self, data_cfg, train: bool, heatmap_sigma: float | None = None):
        self.train = train
        self.input_size = tuple(int(v) for v in data_cfg.input_size)                 # (W, H)
        self.udp = bool(data_cfg.augment.topdown.udp)
        self.heatmap_sigma = float(heatmap_sigma) if train and heatmap_sigma is not None else None
        self.heatmap_size = (self.input_size[0] // 4, self.input_size[1] // 4)
        self.pipeline = topdown_train_transforms(data_cfg) if train else topdown_test_transforms(data_cfg)

    def targets(self, keypoints: np.ndarray) -> dict:
        """Targets of one person's (K, 3) keypoints in network-input pixels."""
        coords, weights = encode(keypoints, self.input_size, self.udp)
        target = {"coords": torch.from_numpy(coords), "coord_weights": torch.from_numpy(weights)}
        if self.heatmap_sigma is not None:
            # TFPose generates the auxiliary targets with UDP (paper Sec. 4.1), whatever the crop convention.
            hm, hm_w = udp_heatmaps(keypoints, self.input_size, self.heatmap_size, self.heatmap_sigma)
            target.update(heatmaps=torch.from_numpy(hm), heatmap_weights=torch.from_numpy(hm_w))
        return target

    def __call__(self, raw: dict, rng=None) -> dict:
        sample = self.pipeline(raw, rng)
        person = sample.get("person_index", -1)
        target = {}
        if person is not None and person >= 0:
            target = self.targets(sample["keypoints"][person])
        elif self.train:
            raise ValueError("top-down training samples need a ground-truth person (person_index >= 0)")
        return {"image": to_tensor_normalize(sample["image"]), "target": target, "meta": make_meta(sample)}


def topdown_transform(cfg, train: bool, heatmap_sigma: float | None = None) -> TopDownRegressionTransform:
    """A top-down regression method's data pipeline from a full config. The family predicts each crop at one
    scale: a test transform refuses other ``test.scales``."""
    if not train:
        resolve_test_scales(cfg.test, cfg.method, multi_scale=False)
    return TopDownRegressionTransform(cfg.data, train, heatmap_sigma)
