"""DEKR's data pipeline: the official training sample (random affine / flip to the square input, heatmap and offset
targets with their weights; spec Sec. 2) and the official test resize (spec Sec. 3.1), both from DEKR's codec
(:mod:`regpose.codecs.heatmap_offset`), whose resize multi-scale testing also applies to the original image at the
other scales."""
from __future__ import annotations

import numpy as np
import torch

from ...codecs import heatmap_offset
from ...codecs.multiscale import resolve_test_scales
from ...errors import ConfigError
from ...data.targets import dekr_joints
from ...data.transforms import Compose, bottomup_train_transforms, make_meta, select_people, to_tensor_normalize
from ...data.keypoints import keypoint_layout
from .config import eval_input_size

__all__ = ["DEKRTrainTransform", "DEKREvalTransform", "dekr_transform", "MULTI_SCALE"]

MULTI_SCALE = True       # the official multi-scale test (spec Sec. 3.3): decode.run_pipeline


class DEKRTrainTransform:
    """Raw sample -> DEKR training sample (spec Sec. 2): person joints + center slot and offset areas in original
    pixels, the official random affine / flip (data.augment.bottomup) to the square input and the stride-4 output,
    then the heatmap / offset targets with their weights (ignore mask from crowds and unlabelled people)."""

    def __init__(self, cfg):
        self.fmt = cfg.data.format
        layout = keypoint_layout(cfg.data)
        self.k, flip_index = layout.num_keypoints, [int(i) for i in layout.flip_index]
        size = int(cfg.data.input_size[0])
        if size % 32:
            raise ConfigError(f"data.input_size: DEKR needs a multiple of 32, got {cfg.data.input_size}")
        self.output_size = size // 4
        self.model_cfg = cfg.model
        # the center slot (index K) maps to itself under flips
        self.augment = bottomup_train_transforms(cfg.data, flip_index=list(flip_index) + [self.k],
                                                 output_sizes=(self.output_size,), mask=True)

    def arrays(self, raw: dict, rng=None) -> dict:
        """Every array the official ``CocoKeypoints.__getitem__`` makes of one image (numpy, in that order):
        ``joints_raw`` (P, K+1, 3) / ``area_raw`` (P,) in original pixels, the augmented ``sample`` (uint8 input
        image, meta fields, ``augment`` parameters), ``joints`` (P, K+1, 3) output pixels, ``area`` (P,) scaled,
        ``ignore_mask`` (R, R), ``heatmap`` and ``heatmap_weight`` (K+1, R, R; weight before the mask), ``mask`` =
        ignore_mask x heatmap_weight (the heatmap-loss weight), ``offset`` / ``offset_weight`` (2K, R, R)."""
        m = self.model_cfg
        # Official code: the area < 32^2 "no center" rule is COCO's (CrowdPose has no such check)
        joints, area, keep = dekr_joints(raw["keypoints"], raw["areas"], raw["iscrowd"], raw["num_keypoints"],
                                         area_check=self.fmt != "crowdpose")
        sample = select_people(dict(raw), keep)
        sample["keypoints"] = joints                                     # (P, K+1, 3), original pixels
        sample = self.augment(sample, rng)
        layer = sample["outputs"][0]
        r = self.output_size
        # Official code: the offset-weight area is scaled to INPUT pixels² (area_scale = (input / 200 s)²) while
        # the offsets are in output pixels (train_step README Q10)
        out = {"joints_raw": joints, "area_raw": area, "sample": sample, "joints": layer["keypoints"],
               "area": area * sample["area_scale"], "ignore_mask": layer["mask"]}
        out.update(heatmap_offset.encode(out["joints"], out["area"], out["ignore_mask"], r, m.sigma, m.center_sigma,
                                         m.bg_weight, m.offset_radius))
        return out

    def __call__(self, raw: dict, rng=None) -> dict:
        a = self.arrays(raw, rng)
        sample = a["sample"]
        target = {"heatmap": torch.from_numpy(a["heatmap"]), "heatmap_weight": torch.from_numpy(a["mask"]),
                  "offset": torch.from_numpy(a["offset"]), "offset_weight": torch.from_numpy(a["offset_weight"])}
        sample["keypoints"] = sample["keypoints"][:, :self.k]
        return {"image": to_tensor_normalize(sample["image"]), "target": target, "meta": make_meta(sample)}


class DEKREvalTransform:
    """Raw sample -> test sample: the official scale-1 resize (spec Sec. 3.1); with multi-scale testing the original
    image rides along in ``meta['image_raw']`` (``predict`` resizes it to the other scales and drops it)."""

    def __init__(self, cfg):
        self.resize = Compose([heatmap_offset.DEKRTestResize(eval_input_size(cfg), 1.0)])
        self.keep_raw = resolve_test_scales(cfg.test, cfg.method, MULTI_SCALE) != [1.0]

    def __call__(self, raw: dict, rng=None) -> dict:
        original = raw["image"]
        sample = dict(raw)
        sample.setdefault("keypoints", np.zeros((0, 1, 3)))     # inference inputs carry no annotations
        sample = self.resize(sample, rng)
        meta = make_meta(sample)
        if self.keep_raw:
            meta["image_raw"] = original
        return {"image": to_tensor_normalize(sample["image"]), "target": {}, "meta": meta}


def dekr_transform(cfg, train: bool):
    """DEKR's data pipeline: :class:`DEKRTrainTransform` for training, :class:`DEKREvalTransform` for testing."""
    return DEKRTrainTransform(cfg) if train else DEKREvalTransform(cfg)
