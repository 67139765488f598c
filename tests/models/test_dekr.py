"""DEKR: structure and parameter counts of the official models, losses, targets through the transform, the
inference stages (flip merge, center NMS, pose NMS, rescoring features), predict() on official weights, flip and
multi-scale testing, rescore training, and a short training run whose loss falls."""
import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from regpose.compat.dekr import build_from_official
from regpose.compat.official import load_npz_state_dict
from regpose.config import load_config
from regpose.data.collate import collate
from regpose.data.keypoints import get_meta, make_layout
from regpose.errors import ConfigError
from regpose.models import build_model, get_method
from regpose.codecs.heatmap_offset import map_poses, official_test_resize
from regpose.models.dekr import (center_proposals, heatmap_loss, merge_flip, offset_loss, offset_to_pose, pose_nms,
                                 rescore_features, up_interpolate)

from conftest import REAL, REFERENCE

TINY = REFERENCE / "dekr" / "tiny"
TINY_MODEL = {"hrnet_channels": [8, 16, 24, 32], "hrnet_modules": [1, 1, 1], "hrnet_blocks": [1, 1, 1],
              "head_heatmap_channels": 8, "offset_channels_per_keypoint": 4}


def _real_cfg(fmt="coco", size=128, **over):
    root = REAL / fmt
    ann = str(root / ("test_coco.json" if fmt == "coco" else "test_crowdpose.json"))
    raw = {"method": "dekr", "model": dict(TINY_MODEL), "train": {"num_workers": 0},
           "data": {"format": fmt, "input_size": [size, size],
                    "train": {"ann_files": [ann], "image_dir": str(root)},
                    "val": {"ann_files": [ann], "image_dir": str(root)}}}
    for k, v in over.items():
        raw.setdefault(k, {}).update(v)
    return load_config(raw)


@pytest.fixture(scope="module")
def official_tiny():
    cfg_json = json.loads((TINY / "config.json").read_text())
    cfg, model = build_from_official(cfg_json, load_npz_state_dict(TINY / "weights.npz"))
    model.load_rescore_net(str(TINY / "rescore_weights.npz"))
    return cfg, model


# ----------------------------------------------------------------------------------------------------------
# Structure
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone,head,fmt,params", [
    ("hrnet_w32", 32, "coco", 29_561_182), ("hrnet_w48", 48, "coco", 65_684_590),
    ("hrnet_w32", 32, "crowdpose", 29_522_071), ("hrnet_w48", 48, "crowdpose", 65_634_631)])
def test_parameter_counts_equal_official(backbone, head, fmt, params):
    cfg = load_config({"method": "dekr", "model": {"backbone": backbone, "head_heatmap_channels": head},
                       "data": {"format": fmt}})
    with torch.device("meta"):
        model = build_model(cfg)
    assert sum(p.numel() for p in model.parameters()) == params
    backbone_params = sum(p.numel() for p in model.backbone.parameters())
    assert backbone_params == {"hrnet_w32": 29_305_536, "hrnet_w48": 65_325_120}[backbone]


def test_config_files_build(tmp_path):
    from pathlib import Path

    configs = sorted(Path(__file__).resolve().parents[2].joinpath("configs", "dekr").glob("*.yaml"))
    assert len(configs) >= 5
    for path in configs:
        cfg = load_config(path)
        assert cfg.method == "dekr"
        if "tiny" not in path.name:
            with torch.device("meta"):
                model = build_model(cfg)
            k = 17 if cfg.data.format == "coco" else 14
            assert model.num_keypoints == k
            assert cfg.train.optimizer == "adam" and cfg.train.lr == 1e-3 and cfg.test.flip


# ----------------------------------------------------------------------------------------------------------
# Losses and targets
# ----------------------------------------------------------------------------------------------------------
def test_heatmap_loss_by_hand():
    pred = torch.tensor([[[[1.0, 2.0], [0.0, 0.5]]]])
    gt = torch.tensor([[[[0.0, 2.0], [1.0, 0.0]]]])
    w = torch.tensor([[[[1.0, 0.1], [0.1, 0.0]]]])
    # (1*1 + 0.1*0 + 0.1*1 + 0*0.25) / 4
    assert heatmap_loss(pred, gt, w).item() == pytest.approx(1.1 / 4)


def test_offset_loss_by_hand():
    beta = 1 / 9
    pred = torch.tensor([0.05, 1.0, 3.0, -2.0]).view(1, 4, 1, 1)
    gt = torch.tensor([0.0, 0.0, 0.0, 0.0]).view(1, 4, 1, 1)
    w = torch.tensor([0.5, 0.5, 0.0, 0.25]).view(1, 4, 1, 1)
    terms = [0.5 * 0.05 ** 2 / beta * 0.5, (1.0 - 0.5 * beta) * 0.5, 0.0, (2.0 - 0.5 * beta) * 0.25]
    assert offset_loss(pred, gt, w).item() == pytest.approx(sum(terms) / 3, rel=1e-6)
    assert offset_loss(pred, gt, torch.zeros_like(w)).item() == 0.0   # no positives: divides by 1


def test_offset_loss_is_normalised_over_the_global_batch(tmp_path):
    """Issue 18 item 8: 2 DDP processes x 2 images give the loss and gradient of 1 process x 4 images, although
    the two halves supervise very different numbers of offsets (per-rank normalisation would not)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    sys.path.insert(0, str(here))
    from ddp_offset_loss import Scale, offset_batch

    out = tmp_path / "ddp.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(here / "ddp_offset_loss.py"), str(out)]
    r = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    two = torch.load(out, weights_only=True)
    x, gt, weight = offset_batch()
    model = Scale(x.shape[1:])
    loss = offset_loss(model(x), gt, weight)
    loss.backward()
    assert (weight[:2] > 0).sum() > 10 * (weight[2:] > 0).sum()        # the halves are far from balanced
    assert two["losses"].mean().item() == pytest.approx(loss.item(), rel=1e-6)
    assert torch.allclose(two["grad"], model.theta.grad, rtol=1e-5, atol=1e-9)


def test_train_targets_follow_the_spec():
    """Identity augmentation on a square image: heatmap peaks, window weights, center, asymmetric 8x8 offset window
    with weight 1/sqrt(area) (area = max_x^2 + max_y^2 from the origin, the official quirk)."""
    cfg = _real_cfg(size=64)
    aug = cfg.data.augment.bottomup
    aug.min_scale = aug.max_scale = 1.0
    aug.max_rotation = aug.max_translate = aug.flip_prob = 0.0
    tf = get_method("dekr").transform(cfg, True)
    kp = np.zeros((1, 17, 3))
    kp[0, 0] = (20.0, 12.0, 2)     # nose at (5, 3) in the 16x16 output
    kp[0, 5] = (36.0, 40.0, 2)     # left shoulder at (9, 10)
    raw = {"image": np.zeros((64, 64, 3), np.uint8), "image_id": 1, "file_name": "x", "sample_index": 0,
           "orig_size": (64, 64), "keypoints": kp, "boxes": np.zeros((1, 4)), "areas": np.array([2000.0]),
           "iscrowd": np.array([False]), "num_keypoints": np.array([2]), "ann_ids": np.array([1]),
           "mask": np.ones((64, 64), np.float32)}
    t = tf(raw)["target"]
    hm, hw, off, ow = (t[k].numpy() for k in ("heatmap", "heatmap_weight", "offset", "offset_weight"))
    assert hm.shape == (18, 16, 16) and off.shape == (34, 16, 16)
    assert hm[0, 3, 5] == pytest.approx(1.0) and hm[5, 10, 9] == pytest.approx(1.0)
    cx, cy = (5 + 9) / 2, (3 + 10) / 2                       # center = mean of the labelled joints: (7, 6.5)
    assert hm[17, 6, 7] == pytest.approx(math.exp(-0.25 / (2 * 16)), rel=1e-5)   # center sigma 4
    assert hw[0, 3, 5] == 1.0 and hw[0, 15, 15] == pytest.approx(0.1)
    # offsets: pixels x in [7-4, 7+4), y in [6-4, 6+4) hold (px - x_j, py - y_j)
    area = 36.0 ** 2 + 40.0 ** 2                             # input pixels (identity scale)
    ys, xs = np.nonzero(ow[0] > 0)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (3, 10, 2, 9)
    assert ow[0, 5, 5] == pytest.approx(1 / math.sqrt(area), rel=1e-5)
    assert off[0, 5, 8] == pytest.approx(8 - 5) and off[1, 5, 8] == pytest.approx(5 - 3)
    assert off[10, 2, 3] == pytest.approx(3 - 9) and off[11, 2, 3] == pytest.approx(2 - 10)
    assert (ow[2:10] == 0).all()                             # unlabelled joints get no offsets
    del cx, cy


def test_crowdpose_targets_keep_the_official_quirks():
    """CrowdPose path (reference README Q6/Q9, spec §2.1/§2.3): no area rule, so a keypoint-less non-crowd person
    still gets a centre, at the transformed image origin, drawn with the keypoint sigma (index 14 < 17); the all-ones
    mask still ignores the padding; the person has no offsets. The recorded augmentation is replayed."""
    cfg = _real_cfg("crowdpose", size=64)
    tf = get_method("dekr").transform(cfg, True)
    kp = np.zeros((2, 14, 3))
    kp[0, 0] = (20.0, 30.0, 2)
    raw = {"image": np.zeros((64, 64, 3), np.uint8), "image_id": 1, "file_name": "x", "sample_index": 0,
           "orig_size": (64, 64), "keypoints": kp, "boxes": np.zeros((2, 4)), "areas": np.array([500.0, 300.0]),
           "iscrowd": np.array([False, False]), "num_keypoints": np.array([1, 0]), "ann_ids": np.array([1, 2]),
           "augment": {"center": np.array([40.0, 40.0]), "scale": 0.64, "rotation": 0.0, "flip": False}}
    a = tf.arrays(raw)
    # x_out = 16 / 128 (x - 40) + 8: the origin maps to (3, 3), the image to output pixels [3, 11)
    assert np.allclose(a["joints"][1, 14], [3.0, 3.0, 1.0])
    assert a["heatmap"][14, 3, 3] == pytest.approx(1.0)
    assert a["heatmap"][14, 3, 5] == pytest.approx(math.exp(-4 / (2 * 2.0 ** 2)))      # sigma 2, not 4
    inside = np.zeros((16, 16), bool)
    inside[3:11, 3:11] = True
    assert np.array_equal(a["ignore_mask"] > 0, inside)
    assert (a["mask"][:, ~inside] == 0).all()
    assert a["sample"]["augment"]["scale"] == 0.64 and a["sample"]["augment"]["flip"] is False
    # offsets only for person 0 (its centre is its single keypoint): none for the keypoint-less person
    ys, xs = np.nonzero(a["offset_weight"][0])
    assert np.allclose(a["offset"][0, ys, xs], xs - a["joints"][0, 0, 0])
    assert (a["offset_weight"][2:] == 0).all()


# ----------------------------------------------------------------------------------------------------------
# Network, gradients, training
# ----------------------------------------------------------------------------------------------------------
def _tiny_train_batch(cfg, n=2):
    from regpose.data.datasets import build_dataset

    ds = build_dataset(cfg, "train", get_method("dekr").transform(cfg, True), "bottomup")
    return collate([ds[i % len(ds)] for i in range(n)], 32)


def test_forward_shapes_and_gradients_reach_every_parameter():
    cfg = _real_cfg()
    model = build_model(cfg)
    batch = _tiny_train_batch(cfg)
    model.eval()
    with torch.no_grad():
        heatmap, offset = model(batch["images"])
    assert heatmap.shape == (2, 18, 32, 32) and offset.shape == (2, 34, 32, 32)
    model.train()
    # give the zero-initialised affine convs a nudge so their gradient path is exercised away from M = 0
    losses = model(batch["images"], batch["targets"])
    assert set(losses) == {"loss_heatmap", "loss_offset"}
    sum(losses.values()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_training_on_a_few_images_then_decoding_finds_their_people(tmp_path):
    """Targets, losses and the inference decoding agree: overfitting 4 synthetic images (no augmentation) for 150
    Adam steps makes both losses fall and predict() find the (medium-size) people again (COCO OKS AP)."""
    from regpose.data.datasets import build_dataset, ensure_synthetic
    from regpose.engine.evaluator import evaluate_model

    split = {"root": str(tmp_path / "synth"), "synthetic": {"num_images": 4, "seed": 5, "size": [128, 128],
                                                            "max_people": 3}}
    model_cfg = {**TINY_MODEL, "hrnet_layer1_blocks": 1, "hrnet_layer1_planes": 16}
    cfg = load_config({"method": "dekr", "model": model_cfg, "output_dir": str(tmp_path / "run"),
                       "data": {"format": "coco", "input_size": [128, 128], "train": split, "val": split,
                                "augment": {"bottomup": {"min_scale": 1.0, "max_scale": 1.0, "max_rotation": 0.0,
                                                         "max_translate": 0.0, "flip_prob": 0.0}}},
                       "train": {"num_workers": 0}, "test": {"flip": False}})
    torch.set_num_threads(1)          # many small ops: one thread is as fast and immune to a busy machine
    ensure_synthetic(cfg.data.train, "coco")
    ds = build_dataset(cfg, "train", get_method("dekr").transform(cfg, True), "bottomup")
    batch = collate([ds[i] for i in range(len(ds))], 32)
    model = build_model(cfg).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for _ in range(150):
        losses = model(batch["images"], batch["targets"])
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
        history.append([losses["loss_heatmap"].item(), losses["loss_offset"].item()])
    h = np.array(history)
    assert (h[-10:].mean(0) < 0.25 * h[:3].mean(0)).all()            # both losses fall
    metrics, _ = evaluate_model(cfg, model.eval(), torch.device("cpu"), split="val")
    assert metrics["AP50"] >= 0.4 and metrics["APm"] >= 0.5, metrics


# ----------------------------------------------------------------------------------------------------------
# Inference stages
# ----------------------------------------------------------------------------------------------------------
def test_flip_merge_recovers_an_equivariant_network():
    """If the flipped pass sees the mirror image of the plain pass (left/right swapped), merging gives back the plain
    heatmaps and poses exactly."""
    k, h, w = 17, 6, 9
    flip_index = [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]
    gen = torch.Generator().manual_seed(0)
    heat = torch.randn(1, k + 1, h, w, generator=gen)
    pose = offset_to_pose(torch.randn(1, 2 * k, h, w, generator=gen) * 3)
    heat_f = heat.flip(3)[:, flip_index + [k]]
    pf = pose.view(1, k, 2, h, w)[:, flip_index].flip(4)
    pose_f = torch.stack([(w - 1) - pf[:, :, 0], pf[:, :, 1]], 2).view(1, 2 * k, h, w)
    mh, mp = merge_flip(torch.cat([heat, heat_f]), torch.cat([pose, pose_f]), flip_index)
    torch.testing.assert_close(mh, heat)
    torch.testing.assert_close(mp, pose)


def test_offset_to_pose_is_pixel_minus_offset():
    off = torch.zeros(1, 2, 3, 4)
    off[0, 0, 1, 2], off[0, 1, 1, 2] = 0.5, -1.5
    pose = offset_to_pose(off)
    assert pose[0, 0, 1, 2].item() == 2 - 0.5 and pose[0, 1, 1, 2].item() == 1 + 1.5
    assert pose[0, 0, 2, 3].item() == 3 and pose[0, 1, 2, 3].item() == 2


def test_up_interpolate_reads_input_pixel_i_over_f():
    x = torch.arange(12.0).view(1, 1, 3, 4)
    up = up_interpolate(x, (12, 16))                          # f = 4
    assert up.shape == (1, 1, 12, 16)
    torch.testing.assert_close(up[0, 0, ::4, ::4], x[0, 0])
    assert up[0, 0, 4, 2].item() == pytest.approx(4.5)
    torch.testing.assert_close(up[0, 0, -3:, -3:], x[0, 0, -1, -1].expand(3, 3))


@pytest.mark.parametrize("map_size,kernel", [(12, 3), (20, 5), (40, 7)])
def test_center_nms_pool_size_follows_map_size(map_size, kernel):
    cfg = dataclasses.replace(_real_cfg().model, pool_threshold1=30, pool_threshold2=15, max_num_people=30)
    heat = torch.zeros(1, 2, map_size, map_size)
    heat[0, 1, 5, 5] = 0.9
    heat[0, 1, 5, 7] = 0.5                                    # 2 px from 0.9: survives the 3x3 pool only
    heat[0, 1, 5, 10] = 0.3                                   # 3 px from 0.5: suppressed by the 7x7 pool only
    posemap = torch.zeros(1, 2, map_size, map_size)
    props = center_proposals(heat, posemap, 1.0, cfg)
    scores = props[:, 0, 2].tolist()
    expect = {3: [0.9, 0.5, 0.3], 5: [0.9, 0.3], 7: [0.9]}[kernel]
    assert scores == pytest.approx(expect)


def test_pose_nms_groups_and_keeps_highest_heat():
    cfg = dataclasses.replace(_real_cfg().model, nms_threshold=0.05, nms_num_threshold=8, max_num_people=30)
    k = 17
    base = np.stack([np.linspace(20, 60, k), np.linspace(10, 90, k)], -1)   # extent diag ~ 89 px -> radius 4.5
    heat = torch.zeros(k + 1, 100, 100)
    a = base
    b = base + 1.0                                             # duplicate of a (1.4 px away)
    c = base + 30.0                                            # another person
    heat[:k, :, :] = 0.2
    for j, (x, y) in enumerate(b):
        heat[j, int(y), int(x)] = 0.9                          # b sits on stronger heat than a
    props = torch.tensor(np.stack([a, b, c]), dtype=torch.float32)
    props = torch.cat([props, torch.tensor([0.8, 0.7, 0.6]).view(3, 1, 1).expand(3, k, 1)], -1)
    poses, scores, keep = pose_nms([props], [1.0], heat, cfg)
    assert keep.tolist() == [1, 2]                             # a's group keeps b; c survives on its own
    assert poses[0, :, 2] == pytest.approx(np.full(k, 0.7 * 0.9))
    assert scores[1] == pytest.approx(0.6 * 0.2)


def test_rescore_features_by_hand():
    k = 17
    pose = np.zeros((1, k, 3), np.float32)
    pose[0, :, 2] = np.linspace(0, 1, k)
    pose[0, 5, :2] = (0, 0)
    pose[0, 11, :2] = (0, 10)                                 # link 9 = (5, 11), length 10
    pose[0, 6, :2] = (4, 0)
    pose[0, 12, :2] = (4, 30)                                 # link 11 = (6, 12), length 30 -> norm 20
    f = rescore_features(pose, get_meta("coco"))
    assert f.shape == (1, 74)
    assert f[0, 2 * 9: 2 * 9 + 2] == pytest.approx([0.0, -10 / 20])
    assert f[0, 38 + 9] == pytest.approx(0.5) and f[0, 38 + 11] == pytest.approx(1.5)
    assert f[0, 57:] == pytest.approx(pose[0, :, 2])
    assert rescore_features(np.zeros((2, 14, 3)), get_meta("crowdpose")).shape == (2, 59)   # CrowdPose: 15 links
    with pytest.raises(ConfigError, match="rescore_weights"):   # no official links for a layout of one's own
        rescore_features(np.zeros((1, 3, 3)), make_layout(["nose", "left_ear", "right_ear"], 0.05))


def test_eval_transform_resize_matches_official_policy():
    cfg = _real_cfg(size=512)
    tf = get_method("dekr").transform(cfg, False)
    for h, w in [(425, 640), (640, 427), (333, 333), (100, 700)]:
        raw = {"image": np.zeros((h, w, 3), np.uint8), "image_id": 1, "file_name": "x", "sample_index": 0,
               "orig_size": (h, w), "keypoints": np.zeros((0, 17, 3)), "boxes": np.zeros((0, 4))}
        s = tf(raw)
        (wr, hr), _, inv = official_test_resize(h, w, 512)
        assert s["meta"]["input_hw"] == (hr, wr) and min(hr, wr) == 512 and max(hr, wr) % 64 == 0
        np.testing.assert_allclose(s["meta"]["inverse"], inv, atol=1e-9)


# ----------------------------------------------------------------------------------------------------------
# predict(): official weights, flip and multi-scale test
# ----------------------------------------------------------------------------------------------------------
def _official_batch(cfg, scales):
    image = np.load(TINY / "inputs.npz")["image_rgb"]
    tf = get_method("dekr").transform(dataclasses.replace(cfg, test=dataclasses.replace(cfg.test, scales=scales)),
                                      False)
    h, w = image.shape[:2]
    raw = {"image": image, "image_id": 7, "file_name": "tiny", "sample_index": 0, "orig_size": (h, w),
           "keypoints": np.zeros((0, 17, 3)), "boxes": np.zeros((0, 4))}
    return collate([tf(raw)], 32)


@pytest.mark.parametrize("variant,flip,scales", [("noflip", False, [1.0]), ("flip", True, [1.0]),
                                                 ("ms_flip", True, [0.5, 1.0, 2.0])])
def test_predict_reproduces_official_final_poses(official_tiny, variant, flip, scales):
    cfg, model = official_tiny
    ref = np.load(TINY / "outputs.npz")
    model.cfg = dataclasses.replace(model.cfg, **({"nms_threshold": 0.15, "pool_threshold1": 36,
                                                  "pool_threshold2": 18} if len(scales) > 1 else {}))
    try:
        res = model.predict(_official_batch(cfg, scales), dataclasses.replace(cfg.test, flip=flip, scales=scales))[0]
    finally:
        model.cfg = cfg.model
    final = ref[f"{variant}/final_poses"]
    assert res.keypoints.shape == final.shape
    np.testing.assert_allclose(res.keypoints[..., :2], final[..., :2], atol=2e-3)
    np.testing.assert_allclose(res.keypoints[..., 2], final[..., 2], atol=1e-5)
    np.testing.assert_allclose(res.scores, ref[f"{variant}/final_scores_rescored"], atol=1e-5)
    np.testing.assert_allclose(res.boxes[:, :2], final[..., :2].min(1), atol=2e-3)


def test_flip_and_multiscale_change_predictions(official_tiny):
    cfg, model = official_tiny
    outs = {}
    for name, flip, scales in [("plain", False, [1.0]), ("flip", True, [1.0]), ("ms", False, [0.5, 1.0, 2.0])]:
        res = model.predict(_official_batch(cfg, scales), dataclasses.replace(cfg.test, flip=flip, scales=scales))
        outs[name] = res[0]
    for other in ("flip", "ms"):
        a, b = outs["plain"], outs[other]
        assert len(a) != len(b) or np.abs(a.keypoints - b.keypoints).max() > 0.1


def test_multiscale_without_raw_image_is_a_clear_error(official_tiny):
    cfg, model = official_tiny
    batch = _official_batch(cfg, [1.0])
    with pytest.raises(ValueError, match="image_raw"):
        model.predict(batch, dataclasses.replace(cfg.test, scales=[1.0, 2.0]))


def test_map_poses_applies_affine():
    poses = np.array([[[2.0, 4.0, 0.5]]])
    out = map_poses(poses, np.array([[2.0, 0.0, 1.0], [0.0, 0.5, -1.0]]))
    assert out.tolist() == [[[5.0, 1.0, 0.5]]]


# ----------------------------------------------------------------------------------------------------------
# Rescore training and CrowdPose end to end
# ----------------------------------------------------------------------------------------------------------
def test_train_rescore_writes_a_usable_net(tmp_path, official_tiny):
    from regpose.checkpoint import atomic_save
    from regpose.engine.rescore import train_rescore
    from regpose.models.dekr import PoseRescorer

    cfg_off, model = official_tiny
    weights = tmp_path / "tiny.pth"
    atomic_save({"model": model.state_dict()}, weights)
    cfg = _real_cfg(size=64)
    cfg.model = dataclasses.replace(cfg_off.model, rescore_hidden=8)
    out = train_rescore(cfg, str(weights), str(tmp_path / "rescore.pth"), max_images=3, epochs=3)
    state = torch.load(out, weights_only=True)
    assert state["kind"] == "rescore" and state["num_records"] > 0 and len(state["epoch_losses"]) == 3
    rescorer = PoseRescorer.from_file(out)
    assert rescorer.net.l1.in_features == 74 and rescorer.net.l1.out_features == 8


def test_crowdpose_evaluation_end_to_end_on_synthetic_data(tmp_path):
    """Synthetic CrowdPose split -> DEKR eval transform -> predict (flip test) -> results json -> CrowdPose AP."""
    from regpose.engine.evaluator import evaluate_model

    split = {"root": str(tmp_path / "cp_val"), "synthetic": {"num_images": 4, "seed": 3, "size": [128, 128],
                                                              "max_people": 4}}
    cfg = load_config({"method": "dekr", "model": dict(TINY_MODEL), "output_dir": str(tmp_path / "run"),
                       "data": {"format": "crowdpose", "input_size": [128, 128], "val": split},
                       "train": {"num_workers": 0}, "test": {"flip": True}})
    model = build_model(cfg).eval()
    with torch.no_grad():                      # a random net with a confident center map: people everywhere
        model.heatmap_head.final.bias.fill_(0.3)
        model.heatmap_head.final.bias[-1] = 0.5
        model.offset_head.final.weight.normal_(std=0.5)
    metrics, results_path = evaluate_model(cfg, model, torch.device("cpu"), split="val")
    assert set(metrics) >= {"AP", "AP50", "AP75", "AR", "AP_easy", "AP_medium", "AP_hard"}
    results = json.loads(results_path.read_text())
    assert results and all(len(r["keypoints"]) == 14 * 3 for r in results)
    assert len({r["image_id"] for r in results}) == 4


@pytest.mark.parametrize("over", [{"adaptive_conv": False}, {"multi_branch": False},
                                  {"offset_loss_normalization": False}])
def test_paper_ablation_switches_build_and_train(over):
    from regpose.models.layers.adaptive_conv import AdaptiveConv2d

    cfg = _real_cfg(model=over)
    model = build_model(cfg).train()
    blocks = model.offset_head.blocks
    if over.get("adaptive_conv") is False:
        assert not any(isinstance(m, AdaptiveConv2d) for m in model.modules())
    if over.get("multi_branch") is False:
        assert blocks[0].adapt_conv.groups == 1 and model.offset_head.final.groups == 1
    batch = _tiny_train_batch(cfg)
    losses = model(batch["images"], batch["targets"])
    sum(losses.values()).backward()
    if over.get("offset_loss_normalization") is False:
        heat, off = model(batch["images"])                       # raw outputs, still in training mode
        off = off + torch.randn_like(off)                        # away from the near-zero initial offsets
        w = torch.stack([tg["offset_weight"] for tg in batch["targets"]])
        gt = torch.stack([tg["offset"] for tg in batch["targets"]])
        got = model.losses(heat, off, batch["targets"])["loss_offset"].item()
        assert got == pytest.approx(cfg.model.offset_loss_factor * offset_loss(off, gt, (w > 0).float()).item())
        assert got != pytest.approx(cfg.model.offset_loss_factor * offset_loss(off, gt, w).item(), rel=1e-2)


def test_adaptive_conv_impl_comes_from_the_runtime_section():
    from regpose.config import ConfigError
    from regpose.models.layers.adaptive_conv import AdaptiveConv2d

    for impl in ("auto", "deform_conv2d"):
        with torch.device("meta"):
            model = build_model(_real_cfg(runtime={"adaptive_conv_impl": impl}))
        convs = [m for m in model.modules() if isinstance(m, AdaptiveConv2d)]
        assert convs and all(m.impl == impl for m in convs)
    with pytest.raises(ConfigError) as e:
        _real_cfg(model={"adaptive_conv_impl": "grid_sample"})
    assert str(e.value) == "unknown config key 'model.adaptive_conv_impl' (did you mean 'runtime.adaptive_conv_impl'?)"


def test_batched_predict_equals_per_image(official_tiny):
    """Equal-size images run the scale-1 pass as one batch; results equal one-by-one prediction."""
    cfg, model = official_tiny
    image = np.load(TINY / "inputs.npz")["image_rgb"]
    tf = get_method("dekr").transform(cfg, False)
    raws = [image, image[:, ::-1].copy(), np.ascontiguousarray(np.roll(image, 7, axis=1))]
    samples = [tf({"image": im, "image_id": i, "file_name": str(i), "sample_index": i, "orig_size": im.shape[:2]})
               for i, im in enumerate(raws)]
    together = model.predict(collate(samples, 32), cfg.test)
    for s, res in zip(samples, together):
        alone = model.predict(collate([s], 32), cfg.test)[0]
        assert len(alone) == len(res) > 0
        np.testing.assert_allclose(res.keypoints, alone.keypoints, atol=1e-4)
        np.testing.assert_allclose(res.scores, alone.scores, atol=1e-6)
