"""DEKR's pose rescoring net (official ``PredictOKSNet``): predicts the OKS of a pose from its limb geometry and
keypoint scores; inference multiplies the instance score by it. Training it from a pose model's predictions is an
engine loop (:mod:`regpose.engine.rescore`)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...data.keypoints import KeypointMeta
from ...errors import CheckpointError, ConfigError
from ..weights import read_state_dict

__all__ = ["RESCORE_LINKS", "PredictOKSNet", "rescore_features", "PoseRescorer"]

#: Limb links of the rescoring features (official ``get_feature``). Official code: CrowdPose's "torso" normaliser
#: (links 9 and 11) is lhip-lknee and lknee-lankle.
_COCO_LINKS = [(0, 1), (0, 2), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 6), (5, 7), (5, 11), (6, 8), (6, 12), (7, 9),
               (8, 10), (11, 12), (11, 13), (12, 14), (13, 15), (14, 16)]
RESCORE_LINKS = {
    "coco": _COCO_LINKS, "ochuman": _COCO_LINKS,
    "crowdpose": [(12, 13), (13, 0), (13, 1), (0, 2), (1, 3), (2, 4), (3, 5), (0, 6), (1, 7), (6, 8), (7, 9), (8, 10),
         (9, 11), (6, 7), (0, 1)],
}


class PredictOKSNet(nn.Module):
    """Linear(F, H) + ReLU, Linear(H, H) + ReLU, Linear(H, 1); official keys l1, l2, l3."""

    def __init__(self, in_features: int, hidden: int = 256):
        super().__init__()
        self.l1 = nn.Linear(in_features, hidden)
        self.l2 = nn.Linear(hidden, hidden)
        self.l3 = nn.Linear(hidden, 1)

    def reset_parameters(self) -> None:
        """Official init: kaiming-uniform(a=1) weights, zero biases."""
        for lin in (self.l1, self.l2, self.l3):
            nn.init.kaiming_uniform_(lin.weight, a=1)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l3(F.relu(self.l2(F.relu(self.l1(x)))))


def rescore_features(poses: np.ndarray, keypoints: KeypointMeta) -> np.ndarray:
    """(P, K, 3) poses (x, y, keypoint score) of the layout ``keypoints`` -> (P, 2L + L + K) features: limb vectors /
    torso, limb lengths / torso, keypoint scores (official ``get_feature``; torso = mean length of links 9 and 11,
    at least 1). The official links exist for the COCO-17 and CrowdPose-14 layouts only."""
    if keypoints.name not in RESCORE_LINKS:
        raise ConfigError(f"model.rescore_weights: DEKR's rescoring net has limb links for the "
                          f"{', '.join(sorted(RESCORE_LINKS))} layouts only, not {keypoints.name}")
    poses = np.asarray(poses, dtype=np.float32)
    p, k, _ = poses.shape
    links = np.asarray(RESCORE_LINKS[keypoints.name])
    vec = poses[:, links[:, 0], :2] - poses[:, links[:, 1], :2]          # (P, L, 2)
    length = np.sqrt((vec ** 2).sum(-1))                                  # (P, L)
    norm = (length[:, 9] + length[:, 11]) / 2
    norm[norm < 1] = 1
    return np.concatenate([vec.reshape(p, -1) / norm[:, None], length / norm[:, None], poses[:, :, 2]],
                          axis=1).astype(np.float32)


class PoseRescorer:
    """Holds a :class:`PredictOKSNet` and rescales instance scores by its predicted OKS.

    Deliberately not an ``nn.Module`` attribute of :class:`DEKR`: its weights live in their own file (as officially),
    so pose-network checkpoints load with or without one."""

    def __init__(self, net: PredictOKSNet):
        self.net = net.eval()

    @classmethod
    def from_state_dict(cls, state: dict) -> "PoseRescorer":
        if "l1.weight" not in state or "l3.weight" not in state:
            raise CheckpointError(f"rescore weights: expected keys l1/l2/l3, got {sorted(state)[:6]}")
        hidden, in_features = state["l1.weight"].shape
        net = PredictOKSNet(int(in_features), int(hidden))
        net.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()}, strict=True)
        return cls(net)

    @classmethod
    def from_file(cls, path) -> "PoseRescorer":
        """From a ``.pth`` (ours: ``{"model": state dict}``) or an official ``.npz`` of the net's weights."""
        return cls.from_state_dict(read_state_dict(path))

    @torch.no_grad()
    def __call__(self, poses: np.ndarray, scores: np.ndarray, keypoints: KeypointMeta) -> np.ndarray:
        """Final instance score = predicted OKS (NaN -> 0) x instance score (official ``rescore_valid``) of poses in
        the layout ``keypoints``."""
        if len(poses) == 0:
            return np.asarray(scores, dtype=np.float64)
        feats = torch.from_numpy(rescore_features(poses, keypoints))
        out = self.net(feats).numpy()[:, 0].astype(np.float64)
        out[np.isnan(out)] = 0
        return out * np.asarray(scores, dtype=np.float64)
