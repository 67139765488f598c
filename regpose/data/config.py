"""The ``data`` section of a config: which annotation files, which keypoint layout, how to augment.

Augmentation defaults are each family's official settings: bottom-up = DEKR (reference/dekr/spec.md §2.2),
one-stage = QueryPose's Sparse R-CNN mapper (reference/querypose/spec.md §8, detectron2 semantics),
top-down = Poseur / mmpose (reference/poseur/spec.md §1.7). A method's ``transform(cfg, train)`` reads the
section of its family (``cfg.data.augment.<family>``) through the ``from_config`` builders in
:mod:`regpose.data.transforms`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from ..typed import Fraction, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Range

__all__ = ["DataConfig", "KeypointsConfig", "SplitConfig", "SynthSpec", "AugmentConfig", "BottomUpAugment", "OneStageAugment",
           "TopDownAugment", "ColorAugment"]


@dataclass
class KeypointsConfig:
    """A keypoint layout of one's own (e.g. a 5-keypoint animal set); left empty, ``data.format`` names a built-in
    one (COCO-17, CrowdPose-14, MPII-16). Names, pairs, limbs and parts are written with keypoint names; see
    :func:`regpose.data.keypoints.keypoint_layout`."""
    names: list[str] = field(default_factory=list)       # K names in annotation order
    from_annotations: bool = False    # names (+ skeleton) from the first train annotation file's 'categories' entry
    sigmas: list[PositiveFloat] = field(default_factory=list)   # OKS sigmas: K values, or one for every keypoint
    flip_pairs: list[tuple[str, str]] = field(default_factory=list)   # [] = by name: left_x <-> right_x, l_x <-> r_x
    skeleton: list[tuple[str, str]] = field(default_factory=list)     # limbs, for drawing
    upper_body: list[str] = field(default_factory=list)  # top-down half-body augmentation's upper half
    parts: list[list[str]] = field(default_factory=list)  # QueryPose part queries (its scheme "c")


@dataclass
class SynthSpec:
    """Generate the split with ``regpose synth`` into ``SplitConfig.root`` when its annotations are missing."""
    num_images: NonNegativeInt = 0    # 0: not synthetic
    seed: int = 0
    size: tuple[PositiveInt, PositiveInt] = (256, 256)   # (width, height)
    max_people: PositiveInt = 6
    # The rendered joint each keypoint of a declared layout (data.keypoints.names) is placed at, e.g. a paw at
    # "left_wrist"; [] = the joints named like the keypoints. Joints: COCO-17's names, head_top, neck, pelvis,
    # thorax, upper_neck.
    joints: list[str] = field(default_factory=list)


@dataclass
class SplitConfig:
    ann_files: list[str] = field(default_factory=list)   # several files are concatenated (CrowdPose trainval)
    image_dir: str = ""               # '' -> '<dir of the annotation file>/images' if it exists, else that dir
    root: str = ""                    # synthetic splits: output folder (annotations.json + images/)
    synthetic: SynthSpec = field(default_factory=SynthSpec)


@dataclass
class BottomUpAugment:
    """DEKR random affine to a fixed square input (spec §2.2) + horizontal flip."""
    scale_type: Literal["short", "long"] = "short"   # base scale = min(h, w) / 200 ('short') or max ('long')
    min_scale: PositiveFloat = 0.75
    max_scale: PositiveFloat = 1.5
    max_rotation: NonNegativeFloat = 30.0   # degrees, uniform in [-max, max)
    max_translate: NonNegativeFloat = 40.0  # integer shift in [-40 s, 40 s) original pixels
    flip_prob: Fraction = 0.5


@dataclass
class OneStageAugment:
    """Sparse R-CNN / QueryPose mapper (detectron2 semantics): flip, multi-scale short side, optional crop."""
    min_sizes: list[PositiveInt] = field(default_factory=lambda: list(range(480, 801, 32)))
    max_size: PositiveInt = 1333
    sample_style: Literal["choice", "range"] = "choice"
    flip_prob: Fraction = 0.5
    crop: bool = True                 # with probability crop_prob take the resize -> crop -> resize branch
    crop_prob: Fraction = 0.5
    crop_pre_sizes: list[PositiveInt] = field(default_factory=lambda: [400, 500, 600])
    crop_type: Literal["absolute_range", "absolute", "relative_range", "relative"] = "absolute_range"
    crop_size: tuple[PositiveFloat, PositiveFloat] = (384.0, 600.0)
    test_size: PositiveInt = 800      # test: ResizeShortestEdge(test_size, test_max_size)
    test_max_size: PositiveInt = 1333


@dataclass
class TopDownAugment:
    """mmpose / Poseur top-down pipeline: box -> centre/scale, flip, half body, scale/rotation, affine crop."""
    padding: PositiveFloat = 1.25
    flip_prob: Fraction = 0.5
    half_body_prob: Fraction = 0.3
    half_body_min_joints: NonNegativeInt = 8   # applied when more than this many joints are labelled
    half_body_padding: PositiveFloat = 1.5
    scale_factor: Annotated[float, Range(ge=0, lt=1)] = 0.5   # scale *= clip(N(0,1) * f + 1, 1 - f, 1 + f)
    rot_factor: NonNegativeFloat = 40.0   # rotation = clip(N(0,1) * f, -2f, 2f) with probability rot_prob
    rot_prob: Fraction = 0.6
    udp: bool = False                 # unbiased data processing (Huang et al. 2020) instead of mmpose's default


@dataclass
class ColorAugment:
    """Photometric augmentation applied to the network input (after the geometric transforms)."""
    kind: Literal["none", "jitter", "photometric"] = "none"
    # jitter: torchvision-like factors drawn uniformly in [1 - x, 1 + x] (hue: shift in [-x, x] of a turn)
    brightness: NonNegativeFloat = 0.4
    contrast: NonNegativeFloat = 0.4
    saturation: NonNegativeFloat = 0.4
    hue: Annotated[float, Range(ge=0, le=0.5)] = 0.1
    # photometric: mmcv PhotometricDistortion (Poseur HRNet-W48 configs), incl. the official quirks
    brightness_delta: NonNegativeInt = 32
    contrast_range: tuple[NonNegativeFloat, NonNegativeFloat] = (0.5, 1.5)
    saturation_range: tuple[NonNegativeFloat, NonNegativeFloat] = (0.5, 1.5)
    hue_delta: NonNegativeInt = 18
    official_quirks: bool = True      # HSV conversion treats RGB as BGR; the random channel swap is discarded
    cutout: bool = False              # one elliptical black patch (Poseur W48 configs)
    cutout_prob: Fraction = 1.0


@dataclass
class AugmentConfig:
    bottomup: BottomUpAugment = field(default_factory=BottomUpAugment)
    onestage: OneStageAugment = field(default_factory=OneStageAugment)
    topdown: TopDownAugment = field(default_factory=TopDownAugment)
    color: ColorAugment = field(default_factory=ColorAugment)


@dataclass
class DataConfig:
    format: Literal["coco", "crowdpose", "mpii", "ochuman"] = "coco"   # annotation files, evaluator, built-in layout
    keypoints: KeypointsConfig = field(default_factory=KeypointsConfig)   # empty: data.format's keypoint layout
    train: SplitConfig = field(default_factory=SplitConfig)
    val: SplitConfig = field(default_factory=SplitConfig)
    input_size: tuple[PositiveInt, PositiveInt] = (512, 512)   # (width, height) of the network input
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # Whole-image training keeps images whose people have at least this many labelled keypoints in total
    # (DirectPose / FCPose drop images without any; 0 keeps the family's official filter only).
    train_min_keypoints: NonNegativeInt = 0
    # Annotations with a NaN / infinite / null labelled keypoint, box or area: "error" stops at the first one
    # (naming file and annotation id); "skip" drops them with a counted warning.
    invalid_annotations: Literal["error", "skip"] = "error"
