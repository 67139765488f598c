"""Batch samples of possibly different sizes: pad images to a common size (a multiple of the model's
``size_divisibility``) and keep per-sample targets and metas as lists."""
from __future__ import annotations

import math

import torch

__all__ = ["collate", "Collate"]


def collate(samples: list[dict], size_divisibility: int = 1) -> dict:
    images = [s["image"] for s in samples]
    h = max(int(im.shape[-2]) for im in images)
    w = max(int(im.shape[-1]) for im in images)
    if size_divisibility > 1:
        h = int(math.ceil(h / size_divisibility) * size_divisibility)
        w = int(math.ceil(w / size_divisibility) * size_divisibility)
    if all(im.shape[-2] == h and im.shape[-1] == w for im in images):
        batch_images = torch.stack(images)
    else:
        batch_images = images[0].new_zeros((len(images), images[0].shape[0], h, w))
        for i, im in enumerate(images):
            batch_images[i, :, : im.shape[-2], : im.shape[-1]] = im
    return {
        "images": batch_images,
        "targets": [s.get("target", {}) for s in samples],
        "metas": [s["meta"] for s in samples],
    }


class Collate:
    """Picklable collate function with a fixed size divisibility (for DataLoader workers)."""

    def __init__(self, size_divisibility: int = 1):
        self.size_divisibility = size_divisibility

    def __call__(self, samples: list[dict]) -> dict:
        return collate(samples, self.size_divisibility)
