"""Drawing a method's predictions: :class:`Renderer` binds the shared renderer (:mod:`regpose.drawing`) to a keypoint
layout and to what the method's scores mean (:func:`display_defaults`): the keypoint confidence from which a joint
is drawn solid, and the range of its instance scores.

Each method's keypoint scores live on a different scale, so one threshold cannot serve them all:

- Poseur / RLE: derived from the predicted Laplace scale sigma of each coordinate (a fraction of the crop side):
  mean(1 - sigma), or with Poseur's published flip fusion (type2) the uncertainty score of Eq. 8,
  0.7 (1 - exp(-0.2 / sigma_x)) (1 - exp(-0.2 / sigma_y)), whose maximum is 0.7.
- QueryPose: mean(1 - sigma), sigma a fraction of the person box.
- DEKR: centre heatmap value x the keypoint's heatmap value (Gaussian targets of peak 1).
- DirectPose: the person score sqrt(cls x centerness) (x sigmoid(visibility) with the visibility head).
- TFPose: none (spec §10): every keypoint scores 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.keypoints import KeypointMeta, keypoint_layout
from ..drawing import draw_poses
from ..models.topdown_regression import fuse_flip, keypoint_scores
from ..structures import PoseResult

__all__ = ["Renderer", "DisplayDefaults", "display_defaults", "SOLID_SIGMA", "SOLID_HEAT", "SOLID_PERSON_SCORE"]

#: Sigma-based scores (Poseur, RLE, QueryPose): a keypoint is solid when its predicted scale sigma is at most this
#: fraction of the crop / box side. Sigma scales the flow-modelled residual, so it is not literally the error; the
#: value is measured: on the synthetic validation split, Poseur (poseur_tiny_synthetic, 2,723 iterations, AP 0.27)
#: puts 42 % of its joints at sigma <= 0.25 and 93 % of those are right (their OKS term >= 0.5), against 31 % of
#: the rest, alike for mean(1 - sigma) (threshold 0.75) and for Eq. 8 after type2 flip fusion (threshold 0.212).
#: At sigma 0.1 (thresholds 0.9 / 0.523) 98 % of solid joints are right but so are 45 % of the faded ones.
SOLID_SIGMA = 0.25
#: DEKR: solid when centre heat x joint heat reaches 0.15, e.g. a person centre at 0.5 (a clear centre peak) and the
#: joint at 0.3 of its Gaussian peak (within ~1.5 heatmap sigma = 12 input pixels of where the heatmap puts it).
#: mmpose's usual 0.3 on a single heatmap value, halved for the centre factor.
SOLID_HEAT = 0.15
#: DirectPose: every keypoint of a person carries the person score (FCOS classification x centerness), so the
#: threshold says which people are solid: 0.3 is a detection the network clearly prefers to its 0.05 candidates.
SOLID_PERSON_SCORE = 0.3


@dataclass(frozen=True)
class DisplayDefaults:
    """kpt_threshold: keypoint confidence from which a joint is drawn solid; score_max: top of the instance-score
    range when it exceeds 1 (drawn as ``score/max``), else None (scores in [0, 1])."""
    kpt_threshold: float
    score_max: float | None = None


def _rle_defaults(cfg) -> DisplayDefaults:
    """Poseur / RLE: the keypoint score the model itself would give a coordinate with sigma = SOLID_SIGMA, through
    the configured score kind and flip fusion; with rescoring the instance score is box + mean + max keypoint score,
    so its maximum is 1 + 2 x the best keypoint score (3 for mean(1 - sigma), 2.4 for Eq. 8 x 0.7)."""
    import torch

    m = cfg.model

    def score(sigma: float) -> float:
        s = torch.full((1, 2), sigma, dtype=torch.float64)
        if cfg.test.flip:
            mu = torch.zeros_like(s)
            return float(fuse_flip(mu, s, mu, s, m.flip_fusion, m.keypoint_score, m.uncertainty_a,
                                   m.uncertainty_scale)[1])
        return float(keypoint_scores(s, m.keypoint_score, m.uncertainty_a, m.uncertainty_scale))

    best = score(1e-6)                                 # keypoint_score "none": every score is 1, all joints solid
    return DisplayDefaults(round(score(SOLID_SIGMA), 3), 1 + 2 * best if m.rescore else None)


def display_defaults(cfg) -> DisplayDefaults:
    """How to draw ``cfg.method``'s predictions (see the module docstring for what each method's scores are)."""
    method = cfg.method
    if method in ("poseur", "rle"):
        return _rle_defaults(cfg)
    if method == "querypose":
        return DisplayDefaults(1.0 - SOLID_SIGMA)           # instance score p(person) x mean(1 - sigma) <= 1
    if method == "dekr":
        return DisplayDefaults(SOLID_HEAT)                  # instance score: mean heat (x predicted OKS) <= 1
    if method == "directpose":
        return DisplayDefaults(SOLID_PERSON_SCORE)          # instance score sqrt(cls x ctr) <= 1
    if method == "tfpose":
        return DisplayDefaults(0.5)                         # keypoint scores are all 1; instance = box score
    return DisplayDefaults(0.5)


class Renderer:
    """:func:`regpose.drawing.draw_poses` bound to a keypoint layout (``regpose.data.keypoints.KeypointMeta``)
    and to drawing options (``kpt_threshold``, ``score_max``, ``score_threshold``, ``show_boxes``, ...), e.g.
    those of :func:`display_defaults`; options given per call override them."""

    def __init__(self, meta: KeypointMeta, **options):
        self.skeleton = meta.skeleton
        self.left_ids, self.right_ids = meta.left_ids, meta.right_ids
        self.options = options

    @classmethod
    def for_config(cls, cfg, **options) -> "Renderer":
        """The renderer of ``cfg``'s layout with its method's :func:`display_defaults` (``options`` override)."""
        d = display_defaults(cfg)
        return cls(keypoint_layout(cfg.data), **{"kpt_threshold": d.kpt_threshold, "score_max": d.score_max, **options})

    def __call__(self, image: np.ndarray, result: PoseResult, **options) -> np.ndarray:
        opts = {**self.options, **{k: v for k, v in options.items() if v is not None}}
        return draw_poses(image, result, self.skeleton, self.left_ids, self.right_ids, **opts)
