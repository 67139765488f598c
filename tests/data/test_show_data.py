"""show-data renders the method's augmented samples with keypoints mapped through meta['inverse'] and the targets."""
import dataclasses

import cv2
import numpy as np
import torch

from conftest import REAL
from regpose.config import load_config
from regpose.cli.show_data import show_data
from regpose.data.show import render_sample
from regpose.data.targets import dekr_heatmaps
from regpose.data.transforms import bottomup_train_transforms, make_meta, to_tensor_normalize
from regpose.models.registry import MethodSpec, register_method


@dataclasses.dataclass
class _Cfg:
    width: int = 4


def _transform(cfg, train):
    t = bottomup_train_transforms(cfg.data, output_sizes=(32,))

    def f(raw):
        s = t(raw)
        hm, _ = dekr_heatmaps(s["outputs"][0]["keypoints"], 32)
        return {"image": to_tensor_normalize(s["image"]), "target": {"heatmaps": torch.from_numpy(hm),
                "mask": torch.from_numpy(s["outputs"][0]["mask"])}, "meta": make_meta(s)}
    return f


register_method(MethodSpec("_show_test", _Cfg, None, "bottomup", _transform))


def test_show_data_writes_pictures_with_target_panels(tmp_path):
    ann = str(REAL / "coco" / "test_coco.json")
    cfg = load_config({"method": "_show_test", "data": {"format": "coco", "input_size": [128, 128],
                                                        "train": {"ann_files": [ann]}, "val": {"ann_files": [ann]}}})
    paths = show_data(cfg, tmp_path / "show", num_samples=3, seed=1)
    assert len(paths) == 3 and all(p.is_file() for p in paths)
    img = cv2.imread(str(paths[0]))
    assert img.shape == (256, 3 * 256, 3)            # input | heatmaps | mask, 128 enlarged x2 to reach 200 px
    again = show_data(cfg, tmp_path / "again", num_samples=3, seed=1)
    assert all(np.array_equal(cv2.imread(str(a)), cv2.imread(str(b))) for a, b in zip(paths, again))


def test_keypoints_are_drawn_where_the_inverse_puts_them():
    from regpose.data.keypoints import get_meta
    from regpose.drawing import keypoint_colors
    meta = get_meta("coco")
    img = np.zeros((40, 60, 3), np.uint8)
    raw_kp = np.zeros((1, 17, 3))
    raw_kp[0, 9] = [20, 10, 2]                                          # left wrist at (20, 10) in the original
    inv = np.array([[-0.5, 0, 29.5], [0, 0.5, 0]])                      # input -> original: mirror and halve
    sample = {"image": img, "meta": {"inverse": inv}, "target": {}}
    pic = render_sample(sample, raw_kp, meta, min_side=0)
    assert pic.shape == (40, 60, 3)
    ys, xs = np.nonzero(pic.any(-1))
    # forward map: x_in = (29.5 - 20) / 0.5 = 19, y_in = 20; drawn with the *right* colour after the mirror
    assert abs(xs.mean() - 19) < 1 and abs(ys.mean() - 20) < 1
    assert tuple(pic[20, 19]) == keypoint_colors(17, meta.left_ids, meta.right_ids)[meta.index("right_wrist")]
    # a small input is enlarged x5 to reach 200 px: pixel centres map as (x + 0.5) 5 - 0.5 -> (97, 102)
    big = render_sample(sample, raw_kp, meta)
    assert big.shape == (200, 300, 3)
    ys, xs = np.nonzero(big.any(-1))
    assert abs(xs.mean() - 97) < 1 and abs(ys.mean() - 102) < 1
