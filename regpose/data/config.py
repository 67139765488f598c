"""The ``data`` section of a config: which annotation files, which keypoint layout, how to augment."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["DataConfig", "SplitConfig", "SynthSpec"]


@dataclass
class SynthSpec:
    """Generate the split with ``regpose synth`` into ``SplitConfig.root`` when its annotations are missing."""
    num_images: int = 0               # 0: not synthetic
    seed: int = 0
    size: tuple[int, int] = (256, 256)   # (width, height)
    max_people: int = 6


@dataclass
class SplitConfig:
    ann_files: list[str] = field(default_factory=list)   # several files are concatenated (CrowdPose trainval)
    image_dir: str = ""               # '' -> '<dir of the annotation file>/images' if it exists, else that dir
    root: str = ""                    # synthetic splits: output folder (annotations.json + images/)
    synthetic: SynthSpec = field(default_factory=SynthSpec)


@dataclass
class DataConfig:
    format: Literal["coco", "crowdpose", "mpii", "ochuman"] = "coco"   # keypoint layout and evaluator
    train: SplitConfig = field(default_factory=SplitConfig)
    val: SplitConfig = field(default_factory=SplitConfig)
    input_size: tuple[int, int] = (512, 512)   # (width, height) of the network input
