"""DirectPose: structure vs the spec's parameter self-checks, FCOS assignment and losses against hand-computed
values, KPAlign sampling, decoding, flip invariance, every ablation switch, gradients and a short training run."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from regpose.config import ConfigError
from regpose.config import TestConfig as EvalConfig
from regpose.data.keypoints import get_meta
from regpose.models.backbones import BackboneConfig
from regpose.models.base import total_loss
from regpose.models.directpose import (
    COCO_KPALIGN_GROUPS, DirectPose, DirectPoseConfig, KPAlignHead, centerness_target,
    compute_locations, decode_candidates, fcos_assign, heatmap_targets, keypoint_loss, resolve_keypoint_groups,
)

LN2 = math.log(2.0)
COCO = get_meta("coco")


def tiny_cfg(**kw) -> DirectPoseConfig:
    """A small but complete DirectPose: every code path of the full model, narrow widths."""
    base = dict(backbone=BackboneConfig("test_resnet"), fpn_channels=32, head_channels=32,
                num_convs=2, group_channels=8, hm_channels=16)
    base.update(kw)
    return DirectPoseConfig(**base)


def nparams(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def person(x0, y0, x1, y1, seed=0, K=17, v=2):
    """A box and K labelled keypoints inside it."""
    g = torch.Generator().manual_seed(seed)
    kp = torch.rand(K, 2, generator=g) * torch.tensor([x1 - x0, y1 - y0]) + torch.tensor([x0, y0])
    return torch.tensor([x0, y0, x1, y1], dtype=torch.float32), torch.cat((kp, torch.full((K, 1), float(v))), 1)


def make_targets(people_per_image):
    out = []
    for people in people_per_image:
        if people:
            boxes, kps = zip(*people)
            out.append({"boxes": torch.stack(boxes), "keypoints": torch.stack(kps)})
        else:
            out.append({"boxes": torch.zeros(0, 4), "keypoints": torch.zeros(0, 17, 3)})
    return out


# ---------------------------------------------------------------------------------------------------------
# Structure: the spec's parameter self-checks (full size, meta device)
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def full_r50():
    with torch.device("meta"):
        return DirectPose(DirectPoseConfig(), COCO)


def test_head_parameter_counts_match_spec_self_check(full_r50):
    m = full_r50
    kh = m.kpt_head
    assert nparams(m.cls_tower) == 2_362_368
    assert nparams(m.cls_logits) == 2_305
    assert nparams(m.ctr_pred) == 5_185                      # 3x3, 576 -> 1 (centerness on the keypoint tower)
    assert nparams(kh.tower) == 2_329_344
    assert nparams(kh.locator) == 10_386
    assert nparams(kh.sampler) == 333_504
    assert nparams(kh.predictors) == 2_210
    head = nparams(m.cls_tower) + nparams(m.cls_logits) + nparams(m.ctr_pred) + nparams(kh)
    assert head == 5_045_302
    assert nparams(m.heatmap_head) == 462_737


def test_naive_head_parameter_count_matches_spec():
    with torch.device("meta"):
        m = DirectPose(DirectPoseConfig(head="naive"), COCO)
    assert nparams(m.cls_tower) + nparams(m.cls_logits) + nparams(m.ctr_pred) + nparams(m.kpt_head) == 4_807_716


def test_backbone_and_fpn_sizes(full_r50):
    m = full_r50
    # FPN by hand: laterals 1x1 (512, 1024, 2048 -> 256) + 3 output 3x3 + P6 + P7 3x3 convs, all with bias.
    lat = sum(c * 256 + 256 for c in (512, 1024, 2048))
    conv3 = 256 * 256 * 9 + 256
    assert nparams(m.fpn) == lat + 5 * conv3 == 3_868_672
    # ResNet-50 trunk without fc (23,508,032) minus the 53,120 BN affine parameters FrozenBN turns into buffers.
    assert nparams(m.backbone) == 23_508_032 - 53_120
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in m.backbone.modules())
    frozen = {n.split(".")[1] for n, p in m.backbone.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "layer1"}                      # FREEZE_AT = 2: stem + res2
    assert all(p.requires_grad for n, p in m.named_parameters() if not n.startswith("backbone"))
    assert m.strides == [8, 16, 32, 64, 128] and m.size_divisibility == 32


def test_r101_and_groups_17_structure():
    with torch.device("meta"):
        m = DirectPose(DirectPoseConfig(backbone=BackboneConfig("resnet101", norm="frozen_bn", freeze_at=2), kpalign_groups=17), COCO)
    kh = m.kpt_head
    assert kh.G == 17 and kh.out_channels == 17 * 64                 # ungrouped: 1088-wide tower
    assert nparams(kh.predictors) == 17 * (64 * 2 + 2)
    assert nparams(m.backbone) > 42_000_000


def test_full_size_shapes_on_meta(full_r50):
    """Spec §2 example: an 800x1216 input gives P3 100x152 ... P7 7x10 and 20,267 locations."""
    x = torch.empty(1, 3, 800, 1216, device="meta")
    feats = full_r50.fpn(full_r50.backbone(x))
    assert [tuple(f.shape[-2:]) for f in feats] == [(100, 152), (50, 76), (25, 38), (13, 19), (7, 10)]


# ---------------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------------
def test_keypoint_groups_presets_and_errors():
    assert resolve_keypoint_groups(DirectPoseConfig(), COCO) == [list(g) for g in COCO_KPALIGN_GROUPS]
    assert resolve_keypoint_groups(DirectPoseConfig(kpalign_groups=17), COCO) == [[k] for k in range(17)]
    assert resolve_keypoint_groups(DirectPoseConfig(kpalign_groups=1), COCO) == [list(range(17))]
    assert sorted(k for g in COCO_KPALIGN_GROUPS for k in g) == list(range(17))
    with pytest.raises(ConfigError, match="keypoint_groups"):
        resolve_keypoint_groups(DirectPoseConfig(keypoint_groups=[[0, 1], [1, 2]]), COCO)
    crowdpose = get_meta("crowdpose")
    with pytest.raises(ConfigError, match="kpalign_groups"):
        resolve_keypoint_groups(DirectPoseConfig(), crowdpose)   # the 9-group table is COCO-only
    groups = [[0, 1], list(range(2, 14))]
    assert resolve_keypoint_groups(DirectPoseConfig(keypoint_groups=groups), crowdpose) == groups
    with pytest.raises(ConfigError, match="nms_box"):
        DirectPoseConfig(nms_box="box")
    with pytest.raises(ConfigError, match="sizes_of_interest"):
        DirectPoseConfig(sizes_of_interest=[64, 128])


# ---------------------------------------------------------------------------------------------------------
# FCOS assignment (hand-computed)
# ---------------------------------------------------------------------------------------------------------
def _all_locations(h, w, device=None):
    strides = [8, 16, 32, 64, 128]
    locs, st, rng = [], [], []
    soi = [-1, 64, 128, 256, 512, 1e8]
    for l, s in enumerate(strides):
        hl, wl = math.ceil(h / s), math.ceil(w / s)
        loc = compute_locations(hl, wl, s)
        locs.append(loc)
        st.append(torch.full((len(loc),), float(s)))
        rng.append(torch.tensor([[soi[l], soi[l + 1]]], dtype=torch.float32).expand(len(loc), 2))
    return torch.cat(locs), torch.cat(st), torch.cat(rng)


def test_locations_follow_spec_formula():
    loc = compute_locations(2, 3, 16)
    assert loc.tolist() == [[8, 8], [24, 8], [40, 8], [8, 24], [24, 24], [40, 24]]


def test_fcos_assign_center_sampling_and_ambiguity_by_hand():
    locs, strides, ranges = _all_locations(64, 64)
    A = [10.0, 10.0, 50.0, 40.0]     # area 1200; centre (30, 25); P3 sub-box (18, 13, 42, 37)
    B = [30.0, 30.0, 46.0, 46.0]     # area 256;  centre (38, 38); P3 sub-box clipped to B itself
    matched, ltrb = fcos_assign(locs, strides, ranges, torch.tensor([A, B]), radius=1.5)
    pos = {(int(x), int(y), int(s)): int(m) for (x, y), s, m in zip(locs, strides, matched) if m >= 0}
    # A: P3 locations x, y in {20, 28, 36} strictly inside its sub-box; B: {36, 44}^2; (36, 36) is in both and
    # goes to the smaller B. P4 candidates have max(l,t,r,b) < 64, outside P4's [64, 128]: none.
    exp = {(x, y, 8): 0 for x in (20, 28, 36) for y in (20, 28, 36)}
    exp.update({(x, y, 8): 1 for x in (36, 44) for y in (36, 44)})
    assert pos == exp
    i = next(k for k, (x, y) in enumerate(locs.tolist()) if [x, y] == [20, 20] and strides[k] == 8)
    assert ltrb[i].tolist() == [10, 10, 30, 20]
    assert centerness_target(ltrb[i:i + 1]).item() == pytest.approx(math.sqrt(10 / 30 * 10 / 20))
    j = next(k for k, (x, y) in enumerate(locs.tolist()) if [x, y] == [36, 36] and strides[k] == 8)
    assert centerness_target(ltrb[j:j + 1]).item() == pytest.approx(0.6)   # l=t=6, r=b=10


def test_fcos_assign_size_ranges_are_inclusive_by_hand():
    locs, strides, ranges = _all_locations(256, 256)
    matched, _ = fcos_assign(locs, strides, ranges, torch.tensor([[8.0, 8.0, 248.0, 248.0]]), radius=1.5)
    got = sorted((int(s), int(x), int(y)) for (x, y), s, m in zip(locs, strides, matched) if m >= 0)
    # P4 (sub-box 104..152): x, y in {120, 136}, max regression exactly 128 -> in [64, 128].
    # P5 (sub-box 80..176): x, y in {112, 144}, max regression 136 -> in [128, 256]. P3 / P6: out of range.
    exp = sorted([(16, x, y) for x in (120, 136) for y in (120, 136)] +
                 [(32, x, y) for x in (112, 144) for y in (112, 144)])
    assert got == exp


def test_fcos_assign_without_center_sampling_and_empty():
    locs, strides, ranges = _all_locations(64, 64)
    matched, _ = fcos_assign(locs, strides, ranges, torch.tensor([[10.0, 10.0, 50.0, 40.0]]), radius=0)
    p3 = [(int(x), int(y)) for (x, y), s, m in zip(locs, strides, matched) if m >= 0]
    assert sorted(p3) == sorted((x, y) for x in (12, 20, 28, 36, 44) for y in (12, 20, 28, 36))
    matched, ltrb = fcos_assign(locs, strides, ranges, torch.zeros(0, 4))
    assert (matched == -1).all() and ltrb.shape == (len(locs), 4)


# ---------------------------------------------------------------------------------------------------------
# Losses (hand-computed)
# ---------------------------------------------------------------------------------------------------------
def test_keypoint_loss_l1_ctr_by_hand():
    pred = torch.tensor([[[1.0, 2.0], [0.0, 0.0]], [[0.5, 0.5], [3.0, 1.0]], [[7.0, 7.0], [7.0, 7.0]]])
    target = torch.zeros_like(pred)
    labelled = torch.tensor([[1, 0], [1, 1], [0, 0]])
    ctr = torch.tensor([0.5, 0.8, 0.9])       # the third instance has no labelled keypoint: excluded
    # l_0 = |1|+|2| / 2 = 1.5 ; l_1 = (0.5 + 2) / 2 = 1.25 ; L = (0.5*1.5 + 0.8*1.25) / (0.5 + 0.8)
    assert keypoint_loss(pred, target, labelled, ctr).item() == pytest.approx((0.75 + 1.0) / 1.3)
    # Denominator is max(sum w, 1): with small centerness weights the sum is not inflated.
    small = torch.tensor([0.2, 0.3, 0.9])
    assert keypoint_loss(pred, target, labelled, small).item() == pytest.approx(0.2 * 1.5 + 0.3 * 1.25)


def test_keypoint_loss_smoothl1_ctr_nvis_by_hand():
    pred = torch.tensor([[[1.0, 2.0], [0.0, 0.05]], [[0.5, 0.5], [3.0, 1.0]]])
    target = torch.zeros_like(pred)
    labelled = torch.tensor([[1, 1], [1, 1]])
    ctr = torch.tensor([0.5, 0.8])
    b = 1 / 9

    def sl(x):
        return 0.5 * x * x / b if abs(x) < b else abs(x) - 0.5 * b
    e = [[(sl(1) + sl(2)) / 2, (sl(0) + sl(0.05)) / 2], [(sl(0.5) + sl(0.5)) / 2, (sl(3) + sl(1)) / 2]]
    exp = (0.5 * (e[0][0] + e[0][1]) + 0.8 * (e[1][0] + e[1][1])) / (0.5 * 2 + 0.8 * 2)
    got = keypoint_loss(pred, target, labelled, ctr, "smoothl1_ctr_nvis").item()
    assert got == pytest.approx(exp)


@pytest.mark.parametrize("head", ["naive", "kpalign"])
def test_model_losses_by_hand_with_zeroed_outputs(head):
    """Zero the last layers: cls / ctr logits 0, offsets 0, heatmap logits 0. Every loss is then a closed form
    of the FCOS assignment, computed here location by location."""
    torch.manual_seed(0)
    m = DirectPose(tiny_cfg(head=head, hm_channels=16), COCO)
    with torch.no_grad():
        for conv in (m.cls_logits, m.ctr_pred, m.heatmap_head.pred):
            conv.weight.zero_()
            conv.bias.zero_()
        if head == "naive":
            m.kpt_head.pred.weight.zero_()
            m.kpt_head.pred.bias.zero_()
        else:
            m.kpt_head.locator.weight.zero_()
            m.kpt_head.locator.bias.zero_()
            for p in m.kpt_head.predictors:
                p.weight.zero_()
                p.bias.zero_()
    box = torch.tensor([[10.0, 10.0, 50.0, 40.0]])
    kp = torch.zeros(1, 17, 3)
    kp[0, 0] = torch.tensor([30.0, 25.0, 2.0])                 # one labelled keypoint, the others unlabelled
    kp[0, 5] = torch.tensor([100.0, 100.0, 0.0])
    m.train()
    losses = m(torch.randn(1, 3, 64, 64), [{"boxes": box, "keypoints": kp}])
    # Locations: 8x8 + 4x4 + 2x2 + 1 + 1 = 86. Positives: the 9 P3 cells x, y in {20, 28, 36} (see above).
    n_loc, pos = 86, [(x, y) for x in (20, 28, 36) for y in (20, 28, 36)]
    a, g = 0.25, 2.0
    exp_cls = (len(pos) * a * 0.5 ** g * LN2 + (n_loc - len(pos)) * (1 - a) * 0.5 ** g * LN2) / len(pos)
    assert losses["loss_cls"].item() == pytest.approx(exp_cls, rel=1e-5)
    assert losses["loss_ctr"].item() == pytest.approx(LN2, rel=1e-5)            # BCE(0, t) = ln 2 for any t
    w = [math.sqrt(min(x - 10, 50 - x) / max(x - 10, 50 - x) * min(y - 10, 40 - y) / max(y - 10, 40 - y))
         for x, y in pos]
    l_i = [(abs(30 - x) / 8 + abs(25 - y) / 8) / 2 for x, y in pos]        # one labelled keypoint, mean over xy
    exp_kpt = sum(wi * li for wi, li in zip(w, l_i)) / max(sum(w), 1)
    assert losses["loss_kpt"].item() == pytest.approx(exp_kpt, rel=1e-5)
    # Heatmap: 17 x 8 x 8 logits 0, one positive (channel 0, cell (3, 3)); focal sum / 1 positive, weight 4.
    exp_hm = 4.0 * (a * 0.5 ** g * LN2 + (17 * 64 - 1) * (1 - a) * 0.5 ** g * LN2)
    assert losses["loss_hm"].item() == pytest.approx(exp_hm, rel=1e-5)
    assert losses["num_pos"].item() == 9


def test_heatmap_targets_by_hand():
    kp = torch.zeros(2, 17, 3)
    kp[0, 0] = torch.tensor([17.0, 9.0, 2.0])     # cell (x 2, y 1) of a stride-8 map
    kp[0, 1] = torch.tensor([17.0, 9.0, 0.0])     # unlabelled: ignored
    kp[1, 0] = torch.tensor([63.9, 0.0, 1.0])     # occluded but labelled: cell (7, 0)
    kp[1, 2] = torch.tensor([64.0, 8.0, 2.0])     # outside the 8x8 map: ignored
    hm = heatmap_targets(kp, (8, 8), 8)
    assert hm.shape == (17, 8, 8) and hm.sum() == 2
    assert hm[0, 1, 2] == 1 and hm[0, 0, 7] == 1
    g = heatmap_targets(kp, (8, 8), 8, "gaussian", sigma=1.0)
    assert g[0, 1, 2] == 1 and g[0, 1, 3] == pytest.approx(math.exp(-0.5)) and g[0, 2, 3] == pytest.approx(math.exp(-1))
    assert g[1].sum() == 0 and g[2].sum() == 0


# ---------------------------------------------------------------------------------------------------------
# KPAlign
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("separate", [True, False])
def test_kpalign_sampler_reads_the_located_point_with_zero_padding(separate):
    groups = [[0], [1, 2]]
    head = KPAlignHead(16, groups, separate_feats=separate, group_channels=4, head_channels=8, num_convs=1,
                       sample_level="lower", num_levels=2, visibility=False, predictor_init="normal")
    hm, wm, h, w, r = 6, 8, 3, 4, 2
    ramp_x = torch.arange(wm, dtype=torch.float32).expand(hm, wm)
    ramp_y = torch.arange(hm, dtype=torch.float32)[:, None].expand(hm, wm)
    C = head.out_channels
    fmap = torch.zeros(1, C, hm, wm)
    step = C // 2 if separate else C              # each group stream starts with an x-ramp and a y-ramp
    for c0 in range(0, C, step):
        fmap[0, c0], fmap[0, c0 + 1] = ramp_x, ramp_y
    b = torch.zeros(1, 2, 2, h, w)
    b[:, 0, 0], b[:, 0, 1] = 0.25, -0.25          # group 0: (u, v) = (2j + 1 + 0.5, 2i + 1 - 0.5)
    b[:, 1, 0], b[:, 1, 1] = 1.25, 0.0            # group 1: u = 2j + 3.5 -> j = 3 reads past the right edge
    out = head._sample(fmap, b, r, [0, 1])        # (1, 2, C', 3, 4)
    j = torch.arange(w, dtype=torch.float32)
    i = torch.arange(h, dtype=torch.float32)[:, None]
    u0 = (2 * j + 1.5).expand(h, w).clone()
    u0[:, 3] = 7 * 0.5                            # u = 7.5: half of pixel 7 and half of the zero padding
    torch.testing.assert_close(out[0, 0, 0], u0)
    v0 = (2 * i + 0.5).expand(h, w).clone()
    v0[:, 3] *= 0.5                               # the same half-outside column
    torch.testing.assert_close(out[0, 0, 1], v0)
    u1 = (2 * j + 3.5).expand(h, w).clone()
    u1[:, 3] = 7 * 0.5                            # u = 9.5: beyond the last pixel (7) -> all taps are zeros
    u1[:, 2] = 7 * 0.5
    torch.testing.assert_close(out[0, 1, 0][:, :3], u1[:, :3])
    assert torch.all(out[0, 1, 0][:, 3] == 0)


def test_kpalign_offsets_compose_base_and_delta_in_keypoint_order():
    """o_k = b_g + delta_k / r, with r = 1 on P3 and 2 above (sample_level lower), back in COCO order."""
    torch.manual_seed(0)
    m = DirectPose(tiny_cfg(heatmap_aux=False), COCO).eval()
    kh = m.kpt_head
    with torch.no_grad():
        kh.locator.weight.zero_()
        kh.locator.bias.copy_(torch.tensor([[0.5 + g, -1.0] for g in range(9)]).flatten())
        for g, (pred, ks) in enumerate(zip(kh.predictors, kh.groups)):
            pred.weight.zero_()
            pred.bias.copy_(torch.tensor([[float(k), -2.0 * k] for k in ks]).flatten())
    feats = m.fpn(m.backbone(torch.randn(1, 3, 64, 64)))
    _, offsets, bases, _ = kh(feats, None)
    gid = {k: g for g, ks in enumerate(kh.groups) for k in ks}
    for level, o in enumerate(offsets):
        r = 1 if level == 0 else 2
        for k in range(17):
            g = gid[k]
            assert torch.allclose(o[0, k, 0], torch.full_like(o[0, k, 0], 0.5 + g + k / r))
            assert torch.allclose(o[0, k, 1], torch.full_like(o[0, k, 1], -1.0 - 2.0 * k / r))
        assert bases[level].shape[1:3] == (9, 2)


# ---------------------------------------------------------------------------------------------------------
# Decoding and inference
# ---------------------------------------------------------------------------------------------------------
def _logit(p):
    return math.log(p / (1 - p))


def test_decode_candidates_threshold_topk_and_extent_boxes():
    cfg = DirectPoseConfig(pre_nms_thresh=0.05, pre_nms_topk=2)
    strides = torch.tensor([8.0, 8.0, 8.0, 16.0])
    cls = torch.tensor([[_logit(0.9), _logit(0.01), _logit(0.5), _logit(0.8)]])
    ctr = torch.tensor([[_logit(0.5), _logit(0.9), _logit(0.6), _logit(0.5)]])
    kp = torch.zeros(1, 4, 17, 2)
    kp[0, 0, :, 0] = torch.linspace(-5, 30, 17)         # x from -5 (clipped to 0) to 30
    kp[0, 0, :, 1] = torch.linspace(10, 90, 17)         # y up to 90 (clipped to the 64-high image)
    out = {"cls_logits": cls, "ctr_logits": ctr, "keypoints": kp, "strides": strides}
    c = decode_candidates(out, 0, (64, 48), cfg)
    # P3: 0.01 < 0.05 is dropped before centerness; P4: one location. Score = sqrt(cls * ctr).
    assert torch.allclose(c["scores"], torch.tensor([math.sqrt(0.45), math.sqrt(0.3), math.sqrt(0.4)]))
    assert torch.allclose(c["nms_boxes"][0], torch.tensor([0.0, 10.0, 30.0, 64.0]))
    assert torch.allclose(c["keypoints"][0, :, 2], torch.full((17,), math.sqrt(0.45)))
    cfg.pre_nms_topk = 1                                 # top-1 per level by cls x ctr: 0.45 > 0.30 on P3
    c = decode_candidates(out, 0, (64, 48), cfg)
    assert torch.allclose(c["scores"], torch.tensor([math.sqrt(0.45), math.sqrt(0.4)]))


def _confident(cfg_kw=None, bias=3.0):
    torch.manual_seed(0)
    m = DirectPose(tiny_cfg(**(cfg_kw or {})), COCO).eval()
    with torch.no_grad():
        m.cls_logits.bias.fill_(bias)                    # every location passes the 0.05 threshold
    return m


def test_predict_nms_topk_and_inverse_mapping():
    m = _confident()
    x = torch.randn(1, 3, 64, 96)
    meta = {"input_hw": (64, 96), "inverse": np.array([[1.0, 0, 0], [0, 1.0, 0]])}
    tc = EvalConfig(max_people=7)
    r = m.predict({"images": x, "metas": [meta]}, tc)[0]
    assert 0 < len(r) <= 7 and np.all(np.diff(r.scores) <= 0)
    iou = _box_iou(r.boxes)
    assert (iou[np.triu_indices(len(r), 1)] <= 0.6 + 1e-6).all()
    # Inverse affine: original = 2 * input + (5, -3).
    meta2 = dict(meta, inverse=np.array([[2.0, 0, 5], [0, 2.0, -3]]))
    r2 = m.predict({"images": x, "metas": [meta2]}, tc)[0]
    np.testing.assert_allclose(r2.keypoints[..., 0], 2 * r.keypoints[..., 0] + 5, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(r2.keypoints[..., 1], 2 * r.keypoints[..., 1] - 3, rtol=1e-5, atol=1e-3)
    # Boxes are continuous: a corner c maps as 2 (c - 0.5) + t + 0.5.
    np.testing.assert_allclose(r2.boxes, r.boxes * 2 + np.array([4.5, -3.5, 4.5, -3.5]), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(r2.scores, r.scores)
    thr = EvalConfig(max_people=100, score_threshold=float(np.median(r.scores)))
    assert np.all(m.predict({"images": x, "metas": [meta]}, thr)[0].scores > thr.score_threshold)


def _box_iou(b):
    from torchvision.ops import box_iou
    return box_iou(torch.from_numpy(b), torch.from_numpy(b)).numpy()


def test_predict_with_box_branch_reports_predicted_boxes():
    m = _confident({"bbox_branch": True})
    x = torch.randn(1, 3, 64, 64)
    out = m(x)
    assert out["boxes"].shape == (1, 86, 4)
    loc = torch.cat([compute_locations(64 // s or 1, 64 // s or 1, s) for s in (8, 16, 32)] +
                    [compute_locations(1, 1, 64), compute_locations(1, 1, 128)])
    assert torch.all(out["boxes"][0, :, :2] <= loc + 1e-5) and torch.all(out["boxes"][0, :, 2:] >= loc - 1e-5)
    r = m.predict({"images": x, "metas": [{"input_hw": (64, 64), "inverse": np.eye(2, 3)}]}, EvalConfig())[0]
    assert len(r) > 0
    # NMS used the predicted boxes, so the reported boxes are the (clipped) predicted ones, not keypoint extents.
    ext = np.concatenate([r.keypoints[..., :2].min(1), r.keypoints[..., :2].max(1)], 1).clip(0, 64)
    assert not np.allclose(ext, r.boxes)


def test_flip_test_is_flip_invariant():
    """With flip test on, predicting a mirrored image gives the mirrored people with left/right swapped."""
    from regpose.data.keypoints import flip_index
    fi = np.asarray(flip_index("coco"))
    m = _confident()
    assert m.flip_index is not None and list(m.flip_index) == fi.tolist()
    x = torch.randn(1, 3, 64, 96)
    meta = {"input_hw": (64, 96), "inverse": np.eye(2, 3)}
    tc = EvalConfig(flip=True, max_people=20)
    a = m.predict({"images": x, "metas": [meta]}, tc)[0]
    b = m.predict({"images": x.flip(-1), "metas": [meta]}, tc)[0]
    assert len(a) == len(b) > 0
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)
    mirrored = a.keypoints[:, fi].copy()
    mirrored[..., 0] = 95 - mirrored[..., 0]               # pixel indices: x -> W - 1 - x
    np.testing.assert_allclose(b.keypoints, mirrored, atol=1e-3)


def test_assignment_and_targets_are_flip_equivariant():
    """Mirroring the image and its people (keypoints swapped) mirrors positives, centerness and keypoint
    targets: x offsets change sign, left/right keypoints trade places."""
    from regpose.data.keypoints import flip_index
    fi = torch.as_tensor(np.asarray(flip_index("coco")))
    torch.manual_seed(0)
    m = DirectPose(tiny_cfg(), COCO)
    H, W = 128, 256
    raw_locs, raw_strides, index_mirror, off = [], [], [], 0
    for s in m.strides:
        h, w = math.ceil(H / s), math.ceil(W / s)
        raw_locs.append(compute_locations(h, w, s))
        raw_strides.append(torch.full((h * w,), float(s)))
        index_mirror.append(torch.arange(h * w).view(h, w).flip(1).flatten() + off)
        off += h * w
    raw = {"locations": torch.cat(raw_locs), "strides": torch.cat(raw_strides)}
    mirror = torch.cat(index_mirror)
    people = [person(20, 10, 150, 120, seed=1), person(140, 30, 200, 70, seed=2), person(60, 60, 90, 127, seed=3)]
    tg = make_targets([people])
    ftg = [{"boxes": torch.stack((W - tg[0]["boxes"][:, 2], tg[0]["boxes"][:, 1], W - tg[0]["boxes"][:, 0],
                                  tg[0]["boxes"][:, 3]), 1),
            "keypoints": tg[0]["keypoints"][:, fi] * torch.tensor([-1.0, 1, 1]) + torch.tensor([W, 0.0, 0])}]
    a = m.criterion.assign(raw, tg, (H, W))
    b = m.criterion.assign(raw, ftg, (H, W))
    assert a["pos"].sum() > 10
    assert torch.equal(b["pos"][0], a["pos"][0][mirror])
    pos = a["pos"][0]
    torch.testing.assert_close(b["ltrb"][0][mirror][pos], a["ltrb"][0][pos][:, [2, 1, 0, 3]])
    loc = raw["locations"]
    ta = (a["keypoints"][0][pos][..., :2] - loc[pos][:, None]) / raw["strides"][pos][:, None, None]
    tb = (b["keypoints"][0][mirror][pos][..., :2] - loc[mirror][pos][:, None]) / raw["strides"][pos][:, None, None]
    torch.testing.assert_close(tb[:, fi] * torch.tensor([-1.0, 1.0]), ta, atol=1e-5, rtol=1e-5)
    ha = heatmap_targets(tg[0]["keypoints"], (H // 8, W // 8), 8)
    hb = heatmap_targets(ftg[0]["keypoints"], (H // 8, W // 8), 8)
    # Keypoints exactly on a cell border move to the neighbouring cell when mirrored; none here.
    assert torch.equal(hb[fi].flip(-1), ha)


# ---------------------------------------------------------------------------------------------------------
# Switches: each builds, trains a step, and changes the output
# ---------------------------------------------------------------------------------------------------------
SWITCHES = [
    {"head": "naive"},
    {"kpalign_groups": 17},
    {"kpalign_groups": 1},
    {"separate_feats": False},
    {"sample_level": "lower_face_p3"},
    {"sample_level": "same"},
    {"locator_loss": True},
    {"heatmap_aux": False},
    {"hm_target": "gaussian"},
    {"hm_level": "p3_upsampled"},
    {"bbox_branch": True},
    {"ctr_on": "cls"},
    {"kpt_loss": "smoothl1_ctr_nvis"},
    {"assign_box": "keypoint_box"},
    {"center_sampling_radius": 0.0},
    {"use_scale": True},
    {"kpt_visibility_head": True},
]


def _batch():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 96)
    tg = make_targets([[person(4, 6, 60, 62, seed=1), person(50, 20, 90, 50, seed=2)],
                       [person(20, 10, 70, 60, seed=3)]])
    return x, tg


def _step(m, x, tg):
    m.train()
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.01)
    losses = m(x, tg)
    total = total_loss(losses)
    opt.zero_grad()
    total.backward()
    opt.step()
    m.eval()
    with torch.no_grad():
        return losses, m(x)


@pytest.fixture(scope="module")
def base_after_step():
    torch.manual_seed(0)
    base = DirectPose(tiny_cfg(), COCO)
    init = {k: v.clone() for k, v in base.state_dict().items()}
    x, tg = _batch()
    losses, out = _step(base, x, tg)
    return init, losses, out


@pytest.mark.parametrize("switch", SWITCHES, ids=lambda d: "-".join(f"{k}={v}" for k, v in d.items()))
def test_switch_builds_trains_and_changes_output(switch, base_after_step):
    """Start from the default model's weights wherever the switch leaves them in place, train one identical
    step: the switch must change what the network computes (deterministic CPU, so equality means no effect)."""
    init, base_losses, base_out = base_after_step
    torch.manual_seed(0)
    m = DirectPose(tiny_cfg(**switch), COCO)
    own = m.state_dict()
    m.load_state_dict({k: v for k, v in init.items() if k in own and own[k].shape == v.shape}, strict=False)
    x, tg = _batch()
    losses, out = _step(m, x, tg)
    assert all(torch.isfinite(v) for v in losses.values())
    assert ("loss_hm" in losses) == m.cfg.heatmap_aux
    assert ("loss_box" in losses) == m.cfg.bbox_branch
    assert ("loss_locator" in losses) == m.cfg.locator_loss
    assert ("loss_vis" in losses) == m.cfg.kpt_visibility_head
    assert out["keypoints"].shape == base_out["keypoints"].shape
    changed = not torch.equal(out["keypoints"], base_out["keypoints"]) or \
        not torch.equal(out["cls_logits"], base_out["cls_logits"])
    assert changed, f"switch {switch} changed nothing"
    r = m.predict({"images": x, "metas": [{"input_hw": (64, 96), "inverse": np.eye(2, 3)}] * 2}, EvalConfig())
    assert len(r) == 2 and all(res.keypoints.shape[1:] == (17, 3) for res in r)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    # Smaller level boundaries so a 128x128 image has positives on all five levels (per-level scales too).
    m = DirectPose(tiny_cfg(bbox_branch=True, kpt_visibility_head=True, locator_loss=True, use_scale=True,
                            sample_level="lower_face_p3", sizes_of_interest=[12, 24, 40, 56]), COCO)
    with torch.no_grad():   # timm zero-inits each block's last BN gamma, which blocks gradients at step 0
        for mod in m.backbone.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.weight.fill_(1.0)
    boxes = [(4, 4, 124, 124), (0, 0, 60, 75), (80, 80, 127, 127), (70, 10, 100, 40), (100, 40, 116, 56)]
    tg = make_targets([[person(*b, seed=i) for i, b in enumerate(boxes)]] * 2)
    x = torch.randn(2, 3, 128, 128)
    m.train()
    raw = m._network(x, with_heatmap=True)
    levels = torch.log2(raw["strides"][m.criterion.assign(raw, tg, (128, 128))["pos"][0]] / 8).long()
    assert levels.unique().tolist() == [0, 1, 2, 3, 4]
    losses = m.criterion(raw, tg, (128, 128))
    total_loss(losses).backward()
    dead = [n for n, p in m.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert dead == []


def test_images_without_people_train_and_keep_graph():
    torch.manual_seed(0)
    m = DirectPose(tiny_cfg(), COCO)
    m.train()
    losses = m(torch.randn(1, 3, 64, 64), make_targets([[]]))
    assert losses["loss_kpt"].item() == 0 and losses["loss_ctr"].item() == 0 and losses["num_pos"].item() == 0
    total_loss(losses).backward()
    assert m.kpt_head.predictors[0].weight.grad is not None          # connected (DDP needs every parameter)


def test_short_training_run_reduces_loss():
    torch.manual_seed(0)
    m = DirectPose(tiny_cfg(), COCO)
    x, tg = _batch()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=2e-3)
    m.train()
    hist = []
    for _ in range(15):
        losses = m(x, tg)
        total = total_loss(losses)
        opt.zero_grad()
        total.backward()
        opt.step()
        hist.append({k: v.item() for k, v in losses.items()})
    first, last = hist[0], hist[-1]
    assert total_loss(last) < 0.6 * total_loss(first)
    assert last["loss_kpt"] < 0.8 * first["loss_kpt"]


def test_eval_forward_exports_to_onnx_with_dynamic_size(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    m = DirectPose(tiny_cfg(), COCO).eval()

    class Graph(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            o = self.net(x)
            return o["cls_logits"], o["ctr_logits"], o["keypoints"], o["strides"]

    g = Graph(m).eval()
    path = tmp_path / "dp.onnx"
    torch.onnx.export(g, (torch.randn(1, 3, 64, 96),), str(path), dynamo=False, opset_version=17,
                      input_names=["images"], dynamic_axes={"images": {0: "n", 2: "h", 3: "w"}})
    sess = ort.InferenceSession(str(path))
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        ref = g(x)
    got = sess.run(None, {"images": x.numpy()})
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b.numpy(), atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------
# Data pipeline: transform -> collate -> model, on the real COCO sample files
# ---------------------------------------------------------------------------------------------------------
def _real_cfg(**data_over):
    from regpose.config import load_config
    from conftest import REAL, REPO

    over = {"data.train.ann_files": [str(REAL / "coco" / "test_coco.json")],
            "data.val.ann_files": [str(REAL / "coco" / "test_coco.json")],
            "data.train.synthetic.num_images": 0, "data.val.synthetic.num_images": 0,
            "data.augment.onestage.min_sizes": [256, 320], "data.augment.onestage.max_size": 400,
            "data.augment.onestage.test_size": 256, "data.augment.onestage.test_max_size": 400}
    over.update(data_over)
    return load_config(REPO / "configs" / "directpose" / "directpose_r18_synthetic.yaml",
                       [f"{k}={v}" for k, v in over.items()])


@pytest.mark.parametrize("train", [False, True])
def test_transform_targets_map_back_to_the_annotations(train):
    import random

    from regpose.data.datasets import ImageDataset, load_records
    from regpose.data.keypoints import flip_index
    from regpose.models.directpose import directpose_transform

    cfg = _real_cfg()
    records = load_records(cfg.data.val, "coco")
    ds = ImageDataset(records, directpose_transform(cfg, train))
    raw_ds = ImageDataset(records, None)
    fi = np.asarray(flip_index("coco"))
    flips = 0
    for seed in range(4 if train else 1):
        random.seed(seed)
        for i in range(len(ds)):
            s, raw = ds[i], raw_ds[i]
            h, w = s["image"].shape[-2:]
            assert s["image"].dtype == torch.float32 and tuple(s["target"]["image_size"].tolist()) == (h, w)
            if not train:
                assert min(h, w) == 256 or max(h, w) == 400
            kp = s["target"]["keypoints"].numpy()
            lab = kp[..., 2] > 0
            assert np.all(kp[~lab][:, :2] == 0)                       # unlabelled: zeros
            back = (kp[..., :2] - 0.5) @ s["meta"]["inverse"][:, :2].T + s["meta"]["inverse"][:, 2]
            rk = raw["keypoints"][~raw["iscrowd"]] if not train else None
            flipped = bool(s["meta"].get("flipped", False))
            flips += flipped
            # Match people by their mapped-back labelled keypoints against the raw annotations.
            src = raw["keypoints"][:, fi] if flipped else raw["keypoints"]
            for p in range(len(kp)):
                if not lab[p].any():
                    continue
                err = np.abs(src[:, :, :2] - back[p][None])[:, lab[p]].max(axis=(1, 2))
                assert err.min() < 1e-3, err.min()
            if rk is not None:
                assert len(kp) == len(rk)
    if train:
        assert flips > 0


def test_real_batch_trains_and_predicts_in_original_pixels():
    from regpose.data.collate import collate
    from regpose.data.datasets import ImageDataset, load_records
    from regpose.models.directpose import directpose_transform

    cfg = _real_cfg(**{"model.backbone.name": "test_resnet", "model.fpn_channels": 32,
                       "model.head_channels": 32, "model.num_convs": 2, "model.group_channels": 8,
                       "model.hm_channels": 16})
    torch.manual_seed(0)
    m = DirectPose(cfg.model, COCO)
    records = load_records(cfg.data.val, "coco")
    batch = collate([ImageDataset(records, directpose_transform(cfg, False))[i] for i in range(2)],
                    m.size_divisibility)
    assert batch["images"].shape[-1] % 32 == 0 and batch["images"].shape[-2] % 32 == 0
    m.train()
    losses = m(batch["images"], batch["targets"])
    assert losses["num_pos"] > 0 and all(torch.isfinite(v) for v in losses.values())
    with torch.no_grad():
        m.cls_logits.bias.fill_(3.0)
    m.eval()
    res = m.predict(batch, EvalConfig(max_people=5))
    for r, meta in zip(res, batch["metas"]):
        oh, ow = meta["orig_size"]
        assert 0 < len(r) <= 5
        # Candidate keypoints of an untrained net land around the image; they are in original pixels.
        assert r.boxes[:, 2].max() <= ow + 1 and r.boxes[:, 3].max() <= oh + 1 and r.boxes.min() >= -1


class OracleDirectPose(DirectPose):
    """DirectPose whose raw outputs are the training targets of known people: positives of the FCOS assignment
    get a high score and exactly the target keypoints. It exercises everything after the network (decode, NMS,
    mapping to original pixels, COCO results) against the annotations, with no training."""

    oracle_targets: list = []

    def forward(self, images, targets=None):
        raw = self._network(images, with_heatmap=False)
        a = self.criterion.assign(raw, self.oracle_targets, images.shape[-2:])
        # People without labelled keypoints are FCOS positives too (spec §3), but have no pose to report.
        pos = a["pos"] & (a["keypoints"][..., 2] > 0).any(-1)
        ctr = torch.zeros_like(raw["cls_logits"])
        ctr[pos] = torch.logit(centerness_target(a["ltrb"][pos]).clamp(1e-4, 1 - 1e-4))
        kp = a["keypoints"][..., :2]
        # Unlabelled keypoints: put them on the person's first labelled one (they do not count in OKS).
        lab = a["keypoints"][..., 2] > 0
        first = torch.where(lab.any(-1, keepdim=True), lab.float().argmax(-1, keepdim=True), 0)
        anchor = kp.gather(2, first[..., None].expand(-1, -1, 1, 2))
        kp = torch.where(lab[..., None], kp, anchor)
        return {"cls_logits": torch.where(pos, 8.0, -8.0), "ctr_logits": ctr, "keypoints": kp,
                "strides": raw["strides"]}


def test_oracle_outputs_decode_to_the_annotations_and_ap_1():
    from regpose.data.collate import collate
    from regpose.data.datasets import ImageDataset, load_records
    from regpose.evaluation import evaluate
    from regpose.models.directpose import directpose_transform
    from regpose.structures import to_coco_results

    cfg = _real_cfg(**{"model.backbone.name": "test_resnet", "model.fpn_channels": 32,
                       "model.head_channels": 32, "model.num_convs": 2, "model.group_channels": 8,
                       "model.hm_channels": 16})
    records = load_records(cfg.data.val, "coco")
    ds = ImageDataset(records, directpose_transform(cfg, False))
    m = OracleDirectPose(cfg.model, COCO).eval()
    results, errors = [], []
    for i in range(len(ds)):
        batch = collate([ds[i]], m.size_divisibility)
        m.oracle_targets = batch["targets"]
        r = m.predict(batch, EvalConfig(max_people=100))[0]
        rec = records[i]
        people = rec.keypoints[(rec.num_keypoints > 0) & ~rec.iscrowd]
        assert len(r) == len(people)                     # NMS keeps one detection per person
        for p in people:                                # each person found at its annotated pixels
            lab = p[:, 2] > 0
            errors.append(np.abs(r.keypoints[:, lab, :2] - p[None, lab, :2]).max(axis=(1, 2)).min())
        results += to_coco_results(r, rec.image_id)
    assert max(errors) < 1e-3
    metrics = evaluate(str(_real_cfg().data.val.ann_files[0]), results, "coco")
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AR"] == pytest.approx(1.0)
