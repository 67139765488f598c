"""TFPose's data side on the real COCO samples: the shared top-down crop with UDP, coordinate and auxiliary
heatmap targets, decoding back to image pixels (exact round trip), per-image finalize, and top-down inference with
the detections file."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import REAL
from regpose.config import ConfigError, load_config
from regpose.data.datasets import build_dataset, load_records
from regpose.data.keypoints import get_meta
from regpose.models import build_model
from regpose.models.tfpose import tfpose_results, tfpose_transform
from regpose.structures import PoseResult

COCO = REAL / "coco"
TINY_MODEL = dict(backbone={"name": "resnet18", "kwargs": {"channels": [16, 32, 64, 128]}}, embed_dim=32, num_heads=4,
                  num_points=2, num_encoder_layers=1, num_decoder_layers=2, aux_channels=16)


pytestmark = pytest.mark.usefixtures("single_thread")


def make_cfg(udp: bool = True, **model):
    split = {"ann_files": [str(COCO / "test_coco.json")], "image_dir": str(COCO)}
    return load_config({"method": "tfpose", "model": {**TINY_MODEL, **model},
                        "data": {"format": "coco", "input_size": [96, 128], "train": split, "val": split,
                                 "augment": {"topdown": {"udp": udp}}},
                        "test": {"boxes": "gt", "flip": True}})


def _apply(inverse: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ np.asarray(inverse)[:, :2].T + np.asarray(inverse)[:, 2]


@pytest.mark.parametrize("udp", [True, False])
def test_train_targets_map_back_to_the_annotated_keypoints(udp):
    cfg = make_cfg(udp)
    ds = build_dataset(cfg, "train", tfpose_transform(cfg, True), "topdown")
    records = {r.image_id: r for r in load_records(cfg.data.train, "coco")}
    flip_index = get_meta("coco").flip_index
    W, H = cfg.data.input_size
    norm = np.array([W - 1.0, H - 1.0]) if udp else np.array([W, H], dtype=np.float64)
    checked = 0
    for i in range(len(ds)):
        s = ds[i]
        t, meta = s["target"], s["meta"]
        assert s["image"].shape == (3, H, W)
        assert set(t) == {"coords", "coord_weights", "heatmaps", "heatmap_weights"}
        assert t["heatmaps"].shape == (17, H // 4, W // 4)
        gt = records[meta["image_id"]].keypoints[meta["person_index"]].astype(np.float64)
        if meta["flipped"]:
            gt = gt[flip_index]
        back = _apply(meta["inverse"], t["coords"].double().numpy() * norm)
        w = t["coord_weights"][:, 0].numpy() > 0
        assert not (w & (gt[:, 2] == 0)).any()                                    # unlabelled joints: weight 0
        np.testing.assert_allclose(back[w], gt[w, :2], atol=1e-3)
        inside = (t["coords"] >= 0).all(1) & (t["coords"] <= 1).all(1)
        assert (torch.as_tensor(w) <= inside).all()                               # weighted => inside the crop
        # heatmap peaks at the UDP position of each weighted joint (stride (W - 1) / (W/4 - 1))
        hm_w = t["heatmap_weights"].numpy() > 0
        stride = np.array([(W - 1.0) / (W // 4 - 1), (H - 1.0) / (H // 4 - 1)])
        crop_px = t["coords"].double().numpy() * norm
        for k in np.nonzero(w & hm_w)[0]:
            peak = np.unravel_index(int(t["heatmaps"][k].argmax()), t["heatmaps"][k].shape)
            np.testing.assert_allclose(peak[::-1], crop_px[k] / stride, atol=0.5 + 1e-6)
        assert not (hm_w & (gt[:, 2] == 0)).any()
        checked += int(w.sum())
    assert checked > 50


def test_no_heatmap_targets_without_the_auxiliary_loss():
    cfg = make_cfg(aux_heatmap=False)
    sample = build_dataset(cfg, "train", tfpose_transform(cfg, True), "topdown")[0]
    assert set(sample["target"]) == {"coords", "coord_weights"}


@pytest.mark.parametrize("udp", [True, False])
def test_decoding_the_targets_returns_the_annotations(udp):
    """Test-time crop of every GT box, its exact targets fed to the decoder -> the annotated keypoints back."""
    cfg = make_cfg(udp)
    model = build_model(cfg).eval()
    assert model.udp == udp
    ds = build_dataset(cfg, "val", tfpose_transform(cfg, False), "topdown")
    records = {r.image_id: r for r in load_records(cfg.data.val, "coco")}
    targets = tfpose_transform(cfg, True)
    for i in range(len(ds)):
        s = ds[i]
        meta = s["meta"]
        gt = records[meta["image_id"]].keypoints[meta["person_index"]].astype(np.float64)
        crop_kp = gt.copy()
        crop_kp[:, :2] = _apply(np.linalg.inv(np.vstack([meta["inverse"], [0, 0, 1]]))[:2], gt[:, :2])
        coords = targets.targets(crop_kp)["coords"][None]
        res = tfpose_results(coords, [meta], (128, 96))[0]
        lab = gt[:, 2] > 0
        np.testing.assert_allclose(res.keypoints[0, lab, :2], gt[lab, :2], atol=2e-3)
        assert (res.keypoints[..., 2] == 1).all() and res.scores[0] == pytest.approx(meta["box_score"])


def test_predict_and_finalize_on_a_batch():
    torch.manual_seed(0)
    cfg = make_cfg()
    model = build_model(cfg).eval()
    ds = build_dataset(cfg, "val", tfpose_transform(cfg, False), "topdown")
    from regpose.data.collate import collate

    samples = [ds[i] for i in range(3)]
    batch = collate(samples)
    results = model.predict(batch, cfg.test)
    assert len(results) == 3 and all(len(r) == 1 and r.keypoints.shape == (1, 17, 3) for r in results)
    with torch.no_grad():
        coords = model.predict_coords(batch["images"], flip=True)
    for r, c, m in zip(results, coords, batch["metas"]):
        expected = _apply(m["inverse"], c.double().numpy() * np.array([95.0, 127.0]))
        np.testing.assert_allclose(r.keypoints[0, :, :2], expected, atol=1e-3)
    # finalize: two near-identical people -> OKS-NMS keeps the higher box score; scores stay box scores
    a = results[0]
    twin = PoseResult(a.boxes, a.keypoints + 0.5, np.array([0.5], np.float32),
                      {k: (np.array([0.5], np.float32) if k == "box_score" else v) for k, v in a.extras.items()})
    a.extras["box_score"] = np.array([0.9], np.float32)
    a.scores = np.array([0.9], np.float32)
    merged = model.finalize(PoseResult.concat([twin, a], 17), batch["metas"][0])
    assert len(merged) == 1 and merged.scores[0] == pytest.approx(0.9)


def test_topdown_inference_with_detections_writes_valid_results(tmp_path):
    from regpose.data.datasets import read_image
    from regpose.inference.boxes import DetectionBoxes
    from regpose.inference.runner import PoseRunner, write_results

    torch.manual_seed(0)
    cfg = make_cfg()
    model = build_model(cfg).eval()
    boxes = DetectionBoxes(COCO / "test_coco_det_AP_H_56.json", 0.3)
    image = read_image(COCO / "000000000785.jpg")
    result = PoseRunner(model, cfg, batch_size=8)([image], [785], boxes=[boxes(785)])[0]
    assert len(result) >= 1 and np.isfinite(result.keypoints).all()
    path = write_results({785: result}, tmp_path / "results.json")
    entries = json.loads(path.read_text())
    assert len(entries) == len(result) and all(len(e["keypoints"]) == 51 for e in entries)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="model.num_keypoints"):
        build_model(load_config({"method": "tfpose", "model": {**TINY_MODEL, "num_keypoints": 16},
                                 "data": {"format": "coco", "input_size": [96, 128]}}))
    with pytest.raises(ConfigError, match="data.input_size"):
        build_model(load_config({"method": "tfpose", "model": TINY_MODEL,
                                 "data": {"format": "coco", "input_size": [100, 128]}}))


def test_shipped_configs_load_and_count_like_the_paper():
    """Every config under configs/tfpose types cleanly and builds (meta device) with UDP on."""
    from pathlib import Path

    files = sorted((Path(__file__).resolve().parents[2] / "configs" / "tfpose").glob("*.yaml"))
    assert len(files) >= 5
    for f in files:
        cfg = load_config(f)
        assert cfg.method == "tfpose" and cfg.data.augment.topdown.udp
        with torch.device("meta"):
            m = build_model(cfg)
        assert m.udp and m.num_keypoints == len(get_meta(cfg.data.format).sigmas)


def test_runtime_attention_sampler_reaches_the_network():
    """``runtime.attention_sampler`` picks the deformable kernel of the built TFPose (``auto``: grid_sample in
    training, gather in eval); the former ``model.sampler`` names its new place."""
    from regpose.models.layers.deform_attn import MultiScaleDeformableAttention

    def samplers(m):
        return {a.sampler for a in m.modules() if isinstance(a, MultiScaleDeformableAttention)}

    with torch.device("meta"):
        default = build_model(make_cfg()).train()
        gather = build_model(load_config({"method": "tfpose", "model": TINY_MODEL,
                                          "runtime": {"attention_sampler": "gather"}})).train()
    assert samplers(default) == {"grid_sample"} and samplers(default.eval()) == {"auto"}
    assert samplers(gather) == {"gather"} and samplers(gather.eval()) == {"gather"}
    with pytest.raises(ConfigError, match=r"^unknown config key 'model.sampler' \(did you mean "
                                          r"'runtime.attention_sampler'\?\)$"):
        load_config({"method": "tfpose", "model": {**TINY_MODEL, "sampler": "gather"}})
