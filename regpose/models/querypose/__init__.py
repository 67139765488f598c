"""QueryPose (Xiao et al., NeurIPS 2022): sparse end-to-end multi-person pose regression with spatial-aware
part-level queries. Image in, people out: no NMS, no grouping.

Architecture (paper Fig. 2, official code buptxyb666/QueryPose @ 75350bf; ../shared/reference/querypose/spec.md):

  backbone + FPN (P2-P5, 256 ch)
  for each of S stages (weights not shared):
    box decoder (Sparse R-CNN head, Eq. 1): 7x7 multi-level RoIAlign of the proposal boxes, self-attention
        over proposals, dynamic channel interaction, FFN, class logit and box deltas -> refined boxes
    keypoint decoder (Eq. 2): 14x14 RoIAlign on P2 of the *refined* boxes, stacked 3x3 convs,
        [non-light: dynamic interaction refining the instance query], SPEGM (spatial part attention -> part
        embeddings, Sec. 3.2), SIM (gated update of the part queries, Eq. 3), self-attention across parts,
        one normalised linear per part for mu and one for sigma (RLE, Eq. 4)
  training: Hungarian matching per stage (focal / L1 / GIoU costs), focal + L1 + GIoU box losses and the
        RLE keypoint loss on the matched queries at every stage (deep supervision)
  inference: score = p(person) x mean_k(1 - sigma_k); keypoints mapped from the box frame to pixels.

Files: ``config.py`` (knobs, part divisions), ``box_decoder.py``, ``keypoint_decoder.py``, ``model.py`` (the network,
eval decoder, training forward, builder), ``loss.py`` (targets, box and RLE losses), ``decode.py`` (outputs ->
people, flip test), ``transform.py`` (data pipeline). Official behaviours we reproduce deliberately (the released
checkpoints depend on them) are marked ``# Official code:``; spec section numbers are given as (spec 0.2) etc.
"""
from ..registry import MethodSpec, register_method
from .box_decoder import BoxDecoderStage
from .config import QueryPoseConfig, flip_permutation, part_groups
from .keypoint_decoder import SPEGM, KeypointDecoderStage, SelectiveIteration
from .model import QueryPose, build_querypose
from .transform import querypose_transform

__all__ = ["QueryPoseConfig", "QueryPose", "build_querypose", "querypose_transform",
           "part_groups", "flip_permutation", "BoxDecoderStage", "KeypointDecoderStage", "SPEGM",
           "SelectiveIteration"]

register_method(MethodSpec("querypose", QueryPoseConfig, build_querypose, family="onestage",
                           transform=querypose_transform,
                           converter="regpose.compat.querypose"))
