"""Numerical post-processing shared by methods and inference, below the models (layer 1 with data and
evaluation): ``pose_nms`` holds rescoring and OKS-NMS of top-down predictions."""
from .pose_nms import oks_nms, pairwise_oks, rescore, topdown_finalize

__all__ = ["rescore", "pairwise_oks", "oks_nms", "topdown_finalize"]
