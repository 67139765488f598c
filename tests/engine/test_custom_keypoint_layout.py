"""A keypoint layout of one's own, declared only in the config (``data.keypoints``) or in the annotation file's
``categories``: a 5-keypoint "animal" (nose, ears, paws) is generated, trained on and evaluated by one method of
each family, with the layout's OKS sigmas in the evaluator; no package code names it."""
from __future__ import annotations

import contextlib
import copy
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from regpose.config import apply_overrides, load_config
from regpose.data.config import SplitConfig, SynthSpec
from regpose.data.datasets import ensure_synthetic, load_records
from regpose.data.keypoints import get_meta, keypoint_layout, layout_section, make_layout
from regpose.data.synthetic import generate
from regpose.checkpoint import load_checkpoint
from regpose.engine.trainer import train
from regpose.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.usefixtures("single_thread"), pytest.mark.filterwarnings("ignore::DeprecationWarning")]

NAMES = ["nose", "left_ear", "right_ear", "left_paw", "right_paw"]
SIGMAS = [0.026, 0.035, 0.035, 0.062, 0.062]
ANIMAL = {"names": NAMES, "sigmas": SIGMAS,
          "skeleton": [["nose", "left_ear"], ["nose", "right_ear"], ["left_ear", "left_paw"],
                       ["right_ear", "right_paw"]],
          "upper_body": ["nose", "left_ear", "right_ear"],
          "parts": [["nose", "left_ear", "right_ear"], ["left_paw"], ["right_paw"]]}
JOINTS = ["nose", "left_ear", "right_ear", "left_wrist", "right_wrist"]   # where the generator puts each keypoint


def _data(root: Path, from_annotations: bool) -> dict:
    """The ``data`` overrides of a generated 5-keypoint split pair: the layout is declared here (or, with
    ``from_annotations``, in the generated files' categories with the sigmas here) and nowhere else."""
    def split(name: str, n: int, seed: int) -> dict:
        return {"ann_files": [], "root": str(root / name),
                "synthetic": {"num_images": n, "seed": seed, "size": [128, 128], "max_people": 3, "joints": JOINTS}}
    data = {"keypoints": ANIMAL, "train": split("train", 8, 0), "val": split("val", 4, 1)}
    if from_annotations:
        layout = make_layout(NAMES, SIGMAS, skeleton=ANIMAL["skeleton"])
        files = {s: generate(root / s, n, seed=seed, size=(128, 128), max_people=3, progress=False, keypoints=layout,
                             joints=JOINTS) for s, n, seed in (("train", 8, 0), ("val", 4, 1))}
        data = {"keypoints": {"from_annotations": True, "sigmas": SIGMAS},
                **{s: {"ann_files": [str(f)], "root": "", "synthetic": {"num_images": 0}} for s, f in files.items()}}
    return data


# ----------------------------------------------------------------------------------------------------------
# The layout from the config and from the annotation file
# ----------------------------------------------------------------------------------------------------------
def test_declared_layout_pairs_left_and_right_by_name_and_keeps_its_sigmas_skeleton_and_parts():
    cfg = load_config(REPO / "configs/rle/rle_tiny_synthetic.yaml", {"data": {"keypoints": ANIMAL}})
    m = keypoint_layout(cfg.data)
    assert m.name == "custom" and m.keypoint_names == tuple(NAMES) and m.num_keypoints == 5
    assert m.flip_index.tolist() == [0, 2, 1, 4, 3] and m.flip_pairs == [(1, 2), (3, 4)]
    assert m.sigmas.tolist() == SIGMAS
    assert m.skeleton == ((0, 1), (0, 2), (1, 3), (2, 4))
    assert m.upper_body_ids == (0, 1, 2) and m.lower_body_ids == (3, 4)
    assert m.parts("c") == [[0, 1, 2], [3], [4]] and m.parts("a") == [[i] for i in range(5)]
    # explicit pairs for names that do not say their side; one sigma for every keypoint
    pairs = make_layout(["snout", "ear_a", "ear_b"], 0.05, flip_pairs=[["ear_a", "ear_b"]])
    assert pairs.flip_index.tolist() == [0, 2, 1] and pairs.sigmas.tolist() == [0.05] * 3


@pytest.mark.parametrize("section,message", [
    ({"names": NAMES}, "data.keypoints.sigmas"),
    ({"names": NAMES, "sigmas": [0.05, 0.05]}, "data.keypoints.sigmas: expected 5"),
    ({"names": NAMES, "sigmas": [0.05], "skeleton": [["nose", "tail"]]}, "data.keypoints.skeleton: 'tail'"),
    ({"names": ["nose", "left_ear"], "sigmas": [0.05]}, "right_ear"),
    ({"sigmas": [0.05]}, "only used with a declared layout"),
])
def test_a_bad_keypoints_section_is_one_line_naming_the_key(section, message):
    cfg = load_config(REPO / "configs/rle/rle_tiny_synthetic.yaml", {"data": {"keypoints": section}})
    with pytest.raises(ConfigError, match=message):
        keypoint_layout(cfg.data)


def test_the_former_model_num_keypoints_points_to_data_keypoints():
    with pytest.raises(ConfigError, match="data.keypoints"):
        load_config(REPO / "configs/rle/rle_tiny_synthetic.yaml", ["model.num_keypoints=5"])


def test_layout_from_the_annotation_files_categories_with_sigmas_from_the_config(tmp_path):
    ann = generate(tmp_path / "animal", 2, seed=3, size=(96, 96), max_people=2, progress=False,
                   keypoints=make_layout(NAMES, SIGMAS, skeleton=ANIMAL["skeleton"]), joints=JOINTS)
    cat = json.loads(ann.read_text())["categories"][0]
    assert cat["keypoints"] == NAMES and cat["skeleton"] == [[1, 2], [1, 3], [2, 4], [3, 5]]   # COCO: 1-based
    over = {"data": {"keypoints": {"from_annotations": True, "sigmas": [0.05]},
                     "train": {"ann_files": [str(ann)]}, "val": {"ann_files": [str(ann)]}}}
    m = keypoint_layout(load_config(REPO / "configs/rle/rle_tiny_synthetic.yaml", over).data)
    assert m.keypoint_names == tuple(NAMES) and m.skeleton == ((0, 1), (0, 2), (1, 3), (2, 4))
    assert m.flip_pairs == [(1, 2), (3, 4)] and m.sigmas.tolist() == [0.05] * 5
    records = load_records(SplitConfig(ann_files=[str(ann)]), "coco", keypoints=m)
    assert all(r.keypoints.shape[1:] == (5, 3) for r in records)
    with pytest.raises(DataError, match="has 5 keypoints, format 'coco' expects 17"):   # the built-in layout does not fit
        load_records(SplitConfig(ann_files=[str(ann)]), "coco")
    # what a run saves in its config.yaml declares the same layout without the annotation file
    again = keypoint_layout(load_config(REPO / "configs/rle/rle_tiny_synthetic.yaml",
                                        {"data": {"keypoints": layout_section(m)}}).data)
    assert (again.keypoint_names, again.skeleton, again.flip_pairs, again.sigmas.tolist()) == \
        (m.keypoint_names, m.skeleton, m.flip_pairs, m.sigmas.tolist())


def test_generated_layout_keypoints_are_the_coco_joints_they_name(tmp_path):
    """The same seed renders the same people: the animal's keypoints are COCO's nose, ears and wrists."""
    coco = json.loads(generate(tmp_path / "coco", 3, seed=5, size=(96, 96), progress=False).read_text())
    animal = json.loads(generate(tmp_path / "animal", 3, seed=5, size=(96, 96), progress=False,
                                 keypoints=make_layout(NAMES, SIGMAS), joints=JOINTS).read_text())
    columns = [get_meta("coco").index(j) for j in JOINTS]
    assert len(coco["annotations"]) == len(animal["annotations"]) > 0
    for c, a in zip(coco["annotations"], animal["annotations"]):
        assert np.array_equal(np.reshape(c["keypoints"], (17, 3))[columns], np.reshape(a["keypoints"], (5, 3)))
        assert a["bbox"] == c["bbox"] and a["num_keypoints"] == int((np.reshape(a["keypoints"], (5, 3))[:, 2] > 0).sum())
    assert animal["info"]["regpose_synth"]["keypoints"] == NAMES
    split = SplitConfig(root=str(tmp_path / "animal"), synthetic=SynthSpec(num_images=3, seed=5, size=(96, 96)))
    with pytest.raises(DataError, match="keypoints"):     # a folder generated with another layout is refused
        ensure_synthetic(split, "coco")


# ----------------------------------------------------------------------------------------------------------
# Train and evaluate: one method per family
# ----------------------------------------------------------------------------------------------------------
_ONESTAGE_128 = {"augment": {"onestage": {"min_sizes": [96, 112, 128], "max_size": 160, "crop_pre_sizes": [80, 96],
                                          "crop_size": [80, 112], "test_size": 128, "test_max_size": 160}}}
METHODS = {   # RLE reads the layout from its annotation files' categories, the others from the config
    "rle": ("configs/rle/rle_tiny_synthetic.yaml", {"data": {"input_size": [48, 64]}}),
    "dekr": ("configs/dekr/dekr_hrnet_tiny_synthetic.yaml", {"data": {"input_size": [128, 128]}}),
    "querypose": ("configs/querypose/querypose_r18_synthetic.yaml",
                  {"data": _ONESTAGE_128, "test": {"score_threshold": 0.0}}),
}


def _pycocotools_stats(gt_path: Path, results: list) -> list[float]:
    """pycocotools' COCOeval with the layout's sigmas (``params.kpt_oks_sigmas``), the reference for custom OKS."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        e = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), "keypoints")
        e.params.kpt_oks_sigmas = np.asarray(SIGMAS)
        e.evaluate()
        e.accumulate()
        e.summarize()
    return list(e.stats)


@pytest.mark.parametrize("method", METHODS)
def test_a_method_trains_and_evaluates_on_a_layout_declared_only_in_config_or_annotation_file(method, tmp_path):
    config, over = METHODS[method]
    run = tmp_path / "run"
    common = {"output_dir": str(run), "data": _data(tmp_path, from_annotations=method == "rle"),
              "train": {"iters": 4, "batch_size": 2, "num_workers": 0, "log_period": 1, "warmup_iters": 0,
                        "checkpoint_period": 2, "eval_period": 0, "max_minutes": 0.0},
              "test": {"batch_size": 2}}
    cfg = load_config(REPO / config, apply_overrides(common, over))
    torch.manual_seed(0)
    metrics = train(cfg, device="cpu")

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    moved = load_checkpoint(run / "model_0000002.pth")["model"], load_checkpoint(run / "model_final.pth")["model"]
    assert any(not torch.equal(moved[0][k], moved[1][k]) for k in moved[0] if moved[0][k].is_floating_point())
    # evaluated by the real evaluator with the layout's sigmas: equal to pycocotools given the same sigmas
    results = json.loads((run / "results_val.json").read_text())
    assert all(len(r["keypoints"]) == 3 * 5 for r in results)
    assert set(metrics) >= {"AP", "AR"}
    saved = yaml.safe_load((run / "config.yaml").read_text())["data"]["keypoints"]   # names the layout itself
    assert saved["names"] == NAMES and saved["sigmas"] == SIGMAS and not saved["from_annotations"]
    if results:
        ref = _pycocotools_stats(tmp_path / "val" / "annotations.json", results)
        assert [metrics[k] for k in ("AP", "AP50", "AP75", "APm", "APl", "AR")] == pytest.approx(ref[:6], abs=1e-6)
