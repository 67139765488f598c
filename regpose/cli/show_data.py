"""``regpose show-data``: a method's own dataset and transform, rendered by :mod:`regpose.data.show`.

The surface builds what the data layer must not know about (the method named by the config, its family's dataset
and its transform) and hands them to the pure rendering."""
from __future__ import annotations

from pathlib import Path

from ..data.datasets import build_dataset
from ..data.keypoints import keypoint_layout
from ..data.show import render_samples
from ..engine.evaluator import person_boxes
from ..models.registry import get_method

__all__ = ["show_data"]


def show_data(cfg, out_dir, num_samples: int = 8, split: str = "train", seed: int = 0) -> list[Path]:
    """Render ``num_samples`` samples of ``split`` through the method's transform (``train=True`` for the train
    split: its augmentation) into ``out_dir/sample_XX_<image_id>.png``; returns the paths. A top-down validation
    split whose boxes come from a detector model (``test.boxes: model``) gets them computed here first, as the
    evaluator does: the data layer never runs a model."""
    spec = get_method(cfg.method)
    transform = spec.transform(cfg, split == "train")
    boxes = person_boxes(cfg, split) if split != "train" else None
    dataset = build_dataset(cfg, split, None, spec.family, boxes)
    return render_samples(dataset, transform, keypoint_layout(cfg.data), out_dir, num_samples, seed,
                          source=f"method {cfg.method!r}, data.{split}")
