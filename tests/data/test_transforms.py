"""Transforms: flips swap left and right on real images, every augmentation is undone by meta['inverse'], and each
family reproduces its official formulas."""
import numpy as np
import pytest
import torch

from conftest import REAL
from regpose.data.config import DataConfig, SplitConfig
from regpose.data.datasets import ImageDataset, TopDownDataset, load_records
from regpose.data.keypoints import get_meta
from regpose.data.transforms import (BottomUpRandomAffine, Compose, HorizontalFlip,
                                     OneStageAnnotations, PhotometricDistortion, ResizeShortestEdge,
                                     TopDownAffine, TopDownGetBboxCenterScale, TopDownRandomFlip, apply_affine,
                                     box_to_center_scale, bottomup_train_transforms, dekr_affine_matrix,
                                     get_affine_transform, make_meta, onestage_test_transforms,
                                     onestage_train_transforms, shortest_edge_size, to_tensor_normalize,
                                     topdown_test_transforms, topdown_train_transforms, transform_preds)

COCO = REAL / "coco" / "test_coco.json"
META = get_meta("coco")


@pytest.fixture(scope="module")
def records():
    return load_records(SplitConfig(ann_files=[str(COCO)]), "coco")


def _raw(records, image_id):
    ds = ImageDataset(records)
    return ds[[r.image_id for r in records].index(image_id)]


def test_flip_of_a_real_image_swaps_left_and_right(records):
    raw = _raw(records, 785)                 # one fully labelled skier
    img0, kp0 = raw["image"].copy(), raw["keypoints"].copy()
    s = HorizontalFlip(META.flip_index, prob=1.0)(raw, np.random.default_rng(0))
    w = img0.shape[1]
    lw, rw = META.index("left_wrist"), META.index("right_wrist")
    # The left wrist of the flipped person is where the mirrored right wrist was ...
    assert np.allclose(s["keypoints"][0, lw, :2], [w - 1 - kp0[0, rw, 0], kp0[0, rw, 1]])
    assert np.allclose(s["keypoints"][0, rw, :2], [w - 1 - kp0[0, lw, 0], kp0[0, lw, 1]])
    # ... and the image shows there what the original showed at the right wrist.
    for k in range(17):
        x, y = s["keypoints"][0, k, :2].astype(int)
        src = kp0[0, META.flip_index[k], :2].astype(int)
        assert np.array_equal(s["image"][y, x], img0[src[1], src[0]])
    # In the original the person's left wrist is on the image right of the right wrist (facing the camera);
    # after the flip that order is preserved for the relabelled joints.
    assert (kp0[0, lw, 0] > kp0[0, rw, 0]) == (s["keypoints"][0, lw, 0] > s["keypoints"][0, rw, 0])


def test_flip_twice_is_the_identity(records):
    raw = _raw(records, 197388)
    img0, kp0, boxes0 = raw["image"].copy(), raw["keypoints"].copy(), raw["boxes"].copy()
    f = HorizontalFlip(META.flip_index, prob=1.0)
    s = f(f(raw, 0), 1)
    assert np.array_equal(s["image"], img0)
    assert np.allclose(s["keypoints"], kp0) and np.allclose(s["boxes"], boxes0)
    assert np.allclose(s["affine"], np.eye(3)) and not s["flipped"]


def _check_inverse(s, orig_kp, orig_ids, tol=1e-3):
    inv = make_meta(s)["inverse"]
    assert inv.shape == (2, 3)
    back = apply_affine(s["keypoints"][..., :2], inv)
    flipped = np.linalg.det(inv[:, :2]) < 0
    pos = {a: i for i, a in enumerate(orig_ids)}
    checked = 0
    for j, a in enumerate(s["ann_ids"]):
        o = orig_kp[pos[a]][META.flip_index] if flipped else orig_kp[pos[a]]
        lab = s["keypoints"][j, :, 2] > 0
        assert np.abs(back[j][lab] - o[lab, :2]).max(initial=0) < tol
        checked += lab.sum()
    return checked


@pytest.mark.parametrize("seed", range(4))
def test_every_family_is_undone_by_its_inverse(records, seed):
    dc = DataConfig(format="coco", input_size=(256, 256))
    dc.augment.onestage.min_sizes = [288, 320]
    dc.augment.onestage.crop_size = (200, 300)
    dc.augment.color.kind = "photometric"
    n = 0
    for image_id in (40083, 196141, 197388):
        for t in (bottomup_train_transforms(dc, output_sizes=(64,)), onestage_train_transforms(dc),
                  onestage_test_transforms(dc)):
            raw = _raw(records, image_id)
            kp0, ids0 = raw["keypoints"].copy(), raw["ann_ids"].copy()
            n += _check_inverse(t(raw, seed), kp0, ids0)
    dc.input_size = (192, 256)
    for udp in (False, True):
        dc.augment.topdown.udp = udp
        dc.augment.topdown.half_body_prob = 0.5
        td = TopDownDataset(records)
        for i in range(0, len(td), 3):
            for t in (topdown_train_transforms(dc), topdown_test_transforms(dc)):
                raw = td[i]
                kp0, ids0 = raw["keypoints"].copy(), raw["ann_ids"].copy()
                n += _check_inverse(t(raw, seed + i), kp0, ids0)
    assert n > 500


def test_bottomup_affine_is_dekrs(records):
    raw = _raw(records, 196141)
    h, w = raw["image"].shape[:2]
    kp0 = raw["keypoints"].copy()
    t = BottomUpRandomAffine(512, (128,), min_scale=1.0, max_scale=1.0, max_rotation=0, max_translate=0)
    s = t(raw, 0)
    sc = min(h, w) / 200
    # Spec §2.2: scaling R/(200 s), translation R (0.5 - c/(200 s)), no half-pixel term; x_out ~ x_in / 4.
    for r, pts in ((512, s["keypoints"]), (128, s["outputs"][0]["keypoints"])):
        exp = r / (200 * sc) * (kp0[..., :2] - np.array([w / 2, h / 2])) + r / 2
        assert np.allclose(pts[..., :2], exp)
    assert s["area_scale"] == pytest.approx((512 / (200 * sc)) ** 2)
    assert s["outputs"][0]["mask"].shape == (128, 128)
    m, _ = dekr_affine_matrix((320, 214), 2.0, 512, 30.0)
    c = apply_affine(np.array([320.0, 214.0]), m)
    assert np.allclose(c, [256, 256])                                   # centre maps to the middle
    d = apply_affine(np.array([320.0, 114.0]), m) - c                   # 100 px up, scale 1.28, rotated by -30 deg
    assert np.allclose(d, [128 * np.sin(np.radians(-30)), -128 * np.cos(np.radians(-30))])
    # The DEKR flip maps output joints with R_out - 1 - x (not the input flip scaled down): the 3-pixel quirk.
    before = s["outputs"][0]["keypoints"].copy()
    s2 = HorizontalFlip(np.r_[META.flip_index], prob=1.0)(s, 0)
    o = s2["outputs"][0]["keypoints"]
    assert np.allclose(o[:, META.flip_index, 0], 127 - before[..., 0])
    assert np.allclose(s2["keypoints"][:, META.flip_index, 0], 511 - 4 * before[..., 0])


def test_bottomup_augmentation_is_recorded_and_replays(records):
    """The random affine and flip record what they drew in meta['augment']; a raw sample carrying those parameters
    is transformed identically without drawing (how a recorded official sample is replayed), and the raw sample's
    own dict is left untouched."""
    dc = DataConfig(input_size=(256, 256))
    t = bottomup_train_transforms(dc, output_sizes=(64,))
    raw = _raw(records, 196141)
    drawn = [t(raw, seed) for seed in range(6)]
    assert {s["augment"]["flip"] for s in drawn} == {True, False}
    for s in drawn:
        given = dict(raw, augment=make_meta(s)["augment"])
        before = dict(given["augment"])
        replay = t(given, 12345)                                  # another seed: nothing may be drawn from it
        assert given["augment"] == before
        assert np.array_equal(replay["image"], s["image"])
        assert np.array_equal(replay["outputs"][0]["keypoints"], s["outputs"][0]["keypoints"])
        assert np.array_equal(replay["outputs"][0]["mask"], s["outputs"][0]["mask"])
        assert np.allclose(replay["affine"], s["affine"])
    h, w = raw["image"].shape[:2]
    p = drawn[0]["augment"]
    assert 0.75 * min(h, w) / 200 <= p["scale"] < 1.5 * min(h, w) / 200 and abs(p["rotation"]) <= 30
    dx, dy = p["center"] - (w / 2, h / 2)
    assert dx == int(dx) and abs(dx) <= 40 * p["scale"] and dy == int(dy)


def test_topdown_crop_is_mmposes(records):
    td = TopDownDataset(records)
    raw = td[0]
    c, s = box_to_center_scale(raw["box_xywh"], 192 / 256)
    x, y, w, h = raw["box_xywh"]
    assert np.allclose(c, [x + w / 2, y + h / 2])
    assert c.dtype == np.float32 and s[0] / s[1] == pytest.approx(0.75, rel=1e-6)
    assert min(s[0] * 200 / w, s[1] * 200 / h) == pytest.approx(1.25, rel=1e-5)   # the aspect-fixed side
    m = get_affine_transform(c, s, 0, (192, 256))
    # Closed form at rotation 0 (spec §1.2).
    pts = np.array([[100.0, 50.0], [400.0, 300.0]])
    closed = (pts - c) * 192 / (200 * s[0]) + np.array([96, 128])
    assert np.allclose(apply_affine(pts, m), closed, atol=1e-3)
    out = Compose([TopDownGetBboxCenterScale((192, 256)), TopDownAffine((192, 256))])(raw)
    k = out["keypoints"][raw["person_index"]]
    back = transform_preds(k[:, :2], out["center"], out["scale"], (192, 256))
    lab = k[:, 2] > 0
    assert np.abs(back[lab] - raw["keypoints"][raw["person_index"]][lab, :2]).max() < 2e-3
    udp = Compose([TopDownGetBboxCenterScale((192, 256)), TopDownAffine((192, 256), udp=True)])(td[0])
    back = transform_preds(udp["keypoints"][raw["person_index"], :, :2], udp["center"], udp["scale"], (192, 256),
                           use_udp=True)
    assert np.abs(back[lab] - raw["keypoints"][raw["person_index"]][lab, :2]).max() < 2e-3


def test_topdown_flip_moves_the_centre_as_mmpose(records):
    raw = TopDownDataset(records)[1]
    w = raw["image"].shape[1]
    s = TopDownGetBboxCenterScale((192, 256))(raw)
    c0 = s["center"].copy()
    s = TopDownRandomFlip(META.flip_index, prob=1.0)(s, 0)
    assert np.allclose(s["center"], [w - c0[0] - 1, c0[1]])


def test_resize_shortest_edge_is_detectron2s():
    assert shortest_edge_size(480, 640, 800, 1333) == (800, 1067)
    assert shortest_edge_size(300, 1200, 800, 1333) == (333, 1333)
    img = (np.arange(48 * 64 * 3) % 251).astype(np.uint8).reshape(48, 64, 3)
    raw = {"image": img, "keypoints": np.array([[[10.0, 20.0, 2]]]), "boxes": np.array([[4.0, 6.0, 30.0, 40.0]])}
    s = ResizeShortestEdge(96, 1000)(raw, 0)
    from PIL import Image
    assert np.array_equal(s["image"], np.asarray(Image.fromarray(img).resize((128, 96), Image.BILINEAR)))
    assert np.allclose(s["boxes"], [[8.0, 12.0, 60.0, 80.0]])            # detectron2: continuous coords x 2
    assert np.allclose(s["keypoints"][0, 0, :2], [(10.5 * 2) - 0.5, (20.5 * 2) - 0.5])   # +0.5 convention


def test_onestage_annotations_follow_detectron2():
    raw = {"image": np.zeros((50, 60, 3), np.uint8),
           "keypoints": np.array([[[10, 10, 2], [59.4, 20, 2], [60.0, 20, 1]], [[5, 5, 2], [6, 6, 2], [7, 7, 2]],
                                  [[1, 1, 2], [2, 2, 2], [3, 3, 2]]], np.float64),
           "boxes": np.array([[0, 0, 70, 30], [5, 5, 8, 8], [65, 0, 80, 10]], np.float64),
           "iscrowd": np.array([False, True, False]), "ann_ids": np.array([1, 2, 3]),
           "areas": np.ones(3), "num_keypoints": np.array([3, 3, 3])}
    s = OneStageAnnotations()(raw)
    assert s["ann_ids"].tolist() == [1]                                  # crowd and empty (outside) boxes dropped
    assert s["keypoints"][0, :, 2].tolist() == [2, 2, 0]                 # x + 0.5 > W: unlabelled
    assert np.all(s["keypoints"][0, 2] == 0) and np.allclose(s["boxes"][0], [0, 0, 60, 30])


def test_photometric_quirks_and_tensor_normalisation():
    img = (np.random.default_rng(0).random((20, 20, 3)) * 255).astype(np.uint8)
    a = PhotometricDistortion(official_quirks=True)({"image": img.copy()}, np.random.default_rng(5))["image"]
    b = PhotometricDistortion(official_quirks=False)({"image": img.copy()}, np.random.default_rng(5))["image"]
    assert a.shape == img.shape and a.dtype == np.uint8 and not np.array_equal(a, b)
    t = to_tensor_normalize(img)
    ref = (torch.from_numpy(img).permute(2, 0, 1).float() / 255 - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) \
        / torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    assert t.shape == (3, 20, 20) and torch.allclose(t, ref)
