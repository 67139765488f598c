"""Numerical post-processing shared by methods and inference, below the models (layer 1 with data and
evaluation): ``pose_nms`` holds rescoring and OKS-NMS of top-down predictions."""
from .pose_nms import oks_matrix, oks_nms, rescore, topdown_finalize

__all__ = ["rescore", "oks_matrix", "oks_nms", "topdown_finalize"]
