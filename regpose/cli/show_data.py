"""``regpose show-data``: a method's own dataset and transform, rendered by :mod:`regpose.data.show`.

The surface builds what the data layer must not know about (the method named by the config, its family's dataset
and its transform) and hands them to the pure rendering."""
from __future__ import annotations

from pathlib import Path

from ..data.datasets import build_dataset
from ..data.keypoints import keypoint_layout
from ..data.show import render_samples
from ..models.registry import get_method

__all__ = ["show_data"]


def show_data(cfg, out_dir, num_samples: int = 8, split: str = "train", seed: int = 0) -> list[Path]:
    """Render ``num_samples`` samples of ``split`` through the method's transform (``train=True`` for the train
    split: its augmentation) into ``out_dir/sample_XX_<image_id>.png``; returns the paths."""
    spec = get_method(cfg.method)
    transform = spec.transform(cfg, split == "train")
    dataset = build_dataset(cfg, split, None, spec.family)
    return render_samples(dataset, transform, keypoint_layout(cfg.data), out_dir, num_samples, seed,
                          source=f"method {cfg.method!r}, data.{split}")
