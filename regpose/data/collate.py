"""Batch samples of possibly different sizes: pad images to a common size (a multiple of the model's
``size_divisibility``) and keep per-sample targets and metas as lists.

A sample that could not be loaded (a :class:`~regpose.errors.RegposeError` such as an unreadable image) travels
as a :class:`SampleError` (see :class:`CatchErrors`) and is listed in ``batch["errors"]``: raised inside a
DataLoader worker, the error would reach the user as a multi-line traceback, and would end an evaluation that can
go on without that one image."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from ..errors import RegposeError

__all__ = ["collate", "Collate", "SampleError", "CatchErrors"]


@dataclass
class SampleError:
    """The one-line error of sample ``index`` (and the image it belongs to, when the dataset knows it)."""
    index: int
    message: str
    image_id: int | None = None


class CatchErrors(Dataset):
    """Wraps a dataset: a sample whose loading raises a :class:`RegposeError` becomes a :class:`SampleError`."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index):
        try:
            return self.dataset[index]
        except RegposeError as e:
            record_of = getattr(self.dataset, "record_of", None)
            return SampleError(index, str(e), record_of(index).image_id if record_of else None)


def collate(samples: list, size_divisibility: int = 1) -> dict:
    errors = [s for s in samples if isinstance(s, SampleError)]
    samples = [s for s in samples if not isinstance(s, SampleError)]
    if not samples:
        return {"images": None, "targets": [], "metas": [], "errors": errors}
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
        "errors": errors,
    }


class Collate:
    """Picklable collate function with a fixed size divisibility (for DataLoader workers)."""

    def __init__(self, size_divisibility: int = 1):
        self.size_divisibility = size_divisibility

    def __call__(self, samples: list) -> dict:
        return collate(samples, self.size_divisibility)
