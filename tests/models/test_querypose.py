"""QueryPose network: training wiring (losses, gradients, matching edge cases), the RLE loss by hand, part
reassembly, Winograd vs direct decoders, exact fast top-k, flip helpers, ablation switches, runtime options,
transform, export."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from regpose.config import TestConfig as EvalOptions
from regpose.data.keypoints import get_meta
from regpose.models.backbones import BackboneConfig
from regpose.models.querypose import QueryPose, QueryPoseConfig, flip_permutation, part_groups
from regpose.models.querypose.decode import flip_images, fuse_flip, unflip
from regpose.models.querypose.loss import keypoint_loss

COCO = get_meta("coco")


pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_cfg(**kw) -> QueryPoseConfig:
    base = dict(backbone=BackboneConfig("resnet50", kwargs={"channels": [4, 8, 16, 32], "stem_width": 16,
                                                            "zero_init_last": False}),
                hidden_dim=32, num_proposals=8, num_stages=2, num_heads=4,
                dim_feedforward=64, dim_dynamic=8, part_dim=16, num_convs=2, keep_unused_official=False)
    base.update(kw)
    return QueryPoseConfig(**base)


def make_targets(gen: torch.Generator, sizes, people) -> list[dict]:
    out = []
    for (h, w), m in zip(sizes, people):
        xy = torch.rand(m, 2, generator=gen) * torch.tensor([w * 0.6, h * 0.6])
        wh = torch.tensor([w * 0.1, h * 0.1]) + torch.rand(m, 2, generator=gen) * torch.tensor([w * 0.3, h * 0.3])
        boxes = torch.cat([xy, xy + wh], 1)
        kp = torch.rand(m, 17, 2, generator=gen) * wh[:, None] + xy[:, None]
        v = (torch.rand(m, 17, 1, generator=gen) > 0.2).float() * 2
        out.append({"boxes": boxes, "keypoints": torch.cat([kp * (v > 0), v], -1), "labels": torch.zeros(m).long(),
                    "image_size": torch.tensor([h, w])})
    return out


@pytest.fixture(scope="module")
def batch():
    gen = torch.Generator().manual_seed(3)
    images = torch.randn(2, 3, 96, 128, generator=gen)
    images[1, :, 80:] = 0
    return images, make_targets(gen, [(96, 128), (80, 128)], [3, 1])


def test_training_losses_and_gradients_reach_every_parameter(batch):
    torch.manual_seed(0)
    model = QueryPose(tiny_cfg(), COCO).train()
    images, targets = batch
    losses = model(images, targets)
    expected = {f"loss_{k}{s}" for k in ("ce", "bbox", "giou", "kps") for s in ("", "_0")}
    assert set(losses) == expected
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    sum(losses.values()).backward()
    # Keypoints outside a predicted box get no loss by design; with random box heads the predicted boxes are
    # arbitrary, so shrink the delta heads (boxes stay close to the whole-image proposals) and, with a smaller
    # canonical box size, use images whose whole-image boxes fall on every pyramid level (P5, P4, P3, P2).
    for stage in model.box_stages:
        stage.bboxes_delta.weight.data *= 1e-3
        torch.nn.init.zeros_(stage.bboxes_delta.bias)
    model.box_pooler.canonical_box_size = 32.0
    model.zero_grad()
    gen = torch.Generator().manual_seed(1)
    sizes = [(96, 96), (48, 48), (24, 32), (12, 16)]
    images = torch.randn(4, 3, 96, 96, generator=gen)
    sum(model(images, make_targets(gen, sizes, [3, 2, 1, 1])).values()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert no_grad == []
    assert model.flow.s[0][0].weight.grad.abs().sum() > 0        # the RLE flow trains through loss_kps


def test_rle_keypoint_loss_by_hand():
    torch.manual_seed(1)
    model = QueryPose(tiny_cfg(), COCO)
    n, k = 2, 17
    boxes = torch.tensor([[10.0, 20.0, 50.0, 100.0], [0.0, 0.0, 30.0, 30.0]])
    gt = torch.rand(n, k, 3) * 60
    gt[..., 2] = torch.tensor([0.0, 1.0, 2.0]).repeat(n, 6)[:, :k]
    mu = torch.randn(n, k, 2) * 0.3
    sigma = torch.rand(n, k, 2) * 0.5 + 0.05
    got = keypoint_loss(model.flow, mu, sigma, gt, boxes, torch.tensor(3.0))
    total = 0.0
    for i in range(n):
        x1, y1, x2, y2 = boxes[i].tolist()
        w, h = x2 - x1, y2 - y1
        for j in range(k):
            x, y, v = gt[i, j].tolist()
            if v <= 0 or not (0 <= x - x1 <= w and 0 <= y - y1 <= h):
                continue           # unlabelled or outside the predicted box: no loss
            g = torch.tensor([(x - x1) / w - 0.5, (y - y1) / h - 0.5])
            m, s = mu[i, j], sigma[i, j]
            log_phi = model.flow.log_prob(((m - g) / s)[None])[0]
            for c in range(2):
                total += float(torch.log(s[c]) - log_phi.detach())
                total += float(torch.log(s[c] * math.sqrt(2 * math.pi)) + (g[c] - m[c]).abs() / (math.sqrt(2) * s[c] + 1e-9))
    assert got.item() == pytest.approx(total / (3.0 * 17), rel=1e-5)


def test_part_outputs_reassemble_into_dataset_order():
    for scheme in "abcd":
        cfg = tiny_cfg(part_scheme=scheme)
        model = QueryPose(cfg, COCO).eval()
        stage = model.kpt_stages[0]
        for j, (head, part) in enumerate(zip(stage.coord_heads, stage.parts)):
            torch.nn.init.zeros_(head.weight)
            head.bias.data = torch.tensor([[kp, -kp] for kp in part], dtype=torch.float32).reshape(-1)
        roi = torch.randn(3, 32, 14, 14)
        with torch.no_grad():
            mu, sigma, pq, _ = stage(roi, torch.randn(3, 32), model.part_query.weight[None])
        assert mu.shape == (3, 17, 2) and sigma.shape == (3, 17, 2) and pq.shape == (3, len(stage.parts), 16)
        torch.testing.assert_close(mu[0, :, 0], torch.arange(17.0))
        torch.testing.assert_close(mu[0, :, 1], -torch.arange(17.0))
    assert part_groups(COCO, "c") == [[0, 1, 2, 3, 4], [5, 6], [7, 9], [8, 10], [11, 12], [13, 15], [14, 16]]
    assert part_groups(get_meta("crowdpose"), "c", "instance") == [list(range(14))]


def test_winograd_and_direct_decoders_agree():
    # the official tiny model (realistic, well-conditioned weights): both convolution paths give the same people
    from regpose.compat.querypose import _reference_batch, build_reference_model
    from conftest import REFERENCE

    folder = REFERENCE / "querypose" / "tiny"
    model, _ = build_reference_model(folder)
    batch = _reference_batch(folder, model)
    sizes = torch.tensor([list(m["input_hw"]) for m in batch["metas"]])
    with torch.no_grad():
        wino = model(batch["images"], image_sizes=sizes)
        model.conv_impl = "direct"
        assert all(st.conv_impl == "direct" for st in model.kpt_stages)
        direct = model(batch["images"], image_sizes=sizes)
    for key in ("scores", "sigma", "logits"):
        torch.testing.assert_close(wino[key], direct[key], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(wino["keypoints"], direct["keypoints"], atol=1e-3, rtol=1e-5)


def test_fast_topk_equals_full_model_topk(batch):
    torch.manual_seed(4)
    model = QueryPose(tiny_cfg(num_proposals=12), COCO).eval()
    images, targets = batch
    sizes = torch.stack([t["image_size"] for t in targets])
    with torch.no_grad():
        full = model(images, image_sizes=sizes)
        for k in (1, 3, 12):
            fast = model.decode_fast(images, sizes, k)
            top = full["scores"].topk(k, dim=1).indices
            assert torch.equal(fast["proposal_index"], top)
            for key in ("scores", "boxes", "keypoints"):
                ref = full[key].gather(1, top.view(2, k, *([1] * (full[key].dim() - 2))).expand(2, k, *full[key].shape[2:]))
                torch.testing.assert_close(fast[key], ref)


def test_fast_topk_widens_when_class_order_and_pose_order_disagree(batch):
    torch.manual_seed(5)
    model = QueryPose(tiny_cfg(num_proposals=12), COCO).eval()
    images, targets = batch
    sizes = torch.stack([t["image_size"] for t in targets])
    calls = []
    orig = model._decode_keypoints_for
    model._decode_keypoints_for = lambda *a: calls.append(a[-1].shape) or orig(*a)
    with torch.no_grad():
        full = model(images, image_sizes=sizes)
        prob = full["logits"].sigmoid()
        # make pose order differ from class order: the proposal with the best class score gets the worst sigma
        k = 2
        fast = model.decode_fast(images, sizes, k)
    assert torch.equal(fast["proposal_index"], full["scores"].topk(k, dim=1).indices)
    # the widening step ran whenever a non-selected proposal's p beat the k-th pose score
    first = prob.topk(k, dim=1).indices
    needs = any(bool((prob[b] > full["scores"][b].gather(0, first[b]).min()).sum() > k) for b in range(2))
    assert (len(calls) > 1) == needs


def test_flip_helpers_are_involutions(batch):
    model = QueryPose(tiny_cfg(), COCO).eval()
    images, targets = batch
    sizes = torch.stack([t["image_size"] for t in targets])
    flipped = flip_images(images, sizes)
    assert torch.equal(flip_images(flipped, sizes), images)
    assert torch.equal(flipped[1, :, 80:], images[1, :, 80:])          # padding stays padding
    torch.testing.assert_close(flipped[0, :, :, 0], images[0, :, :, 127])
    with torch.no_grad():
        out = model(images, image_sizes=sizes)
    back = unflip(unflip(out, sizes, COCO), sizes, COCO)
    for key in ("boxes", "keypoints", "sigma"):
        torch.testing.assert_close(back[key], out[key])
    # fusing a prediction set with its own mirror image leaves it unchanged
    fused = fuse_flip(out, back, 0.5)
    for key in ("scores", "boxes", "keypoints"):
        torch.testing.assert_close(fused[key], out[key])
    assert flip_permutation(COCO)[[1, 5, 16]].tolist() == [2, 6, 15]


def test_more_people_than_queries_and_empty_images_train(batch):
    torch.manual_seed(6)
    model = QueryPose(tiny_cfg(num_proposals=4), COCO).train()
    images, _ = batch
    gen = torch.Generator().manual_seed(7)
    targets = make_targets(gen, [(96, 128), (80, 128)], [9, 0])
    losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    empty = make_targets(gen, [(96, 128), (80, 128)], [0, 0])
    losses = model(images, empty)
    assert losses["loss_kps"].item() == 0 and losses["loss_bbox"].item() == 0
    assert losses["loss_ce"].item() > 0                               # background still supervised


def test_training_loss_falls(batch):
    torch.manual_seed(8)
    model = QueryPose(tiny_cfg(), COCO).train()
    images, targets = batch
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    first = None
    for _ in range(25):
        loss = sum(model(images, targets).values())
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.7 * first


@pytest.mark.parametrize("over", [
    dict(light=True), dict(query_handoff="serial"), dict(query_handoff="parallel"),
    dict(interaction="gap", iteration="none"), dict(interaction="mhsa"), dict(interaction="dymlp_channel"),
    dict(interaction="dymlp_spatial"), dict(iteration="summation"), dict(iteration="concatenation"),
    dict(query_type="instance"), dict(query_type="instance", interaction="dymlp_channel"),
    dict(part_scheme="a"), dict(part_scheme="d", part_dim=32), dict(keep_unused_official=True),
])
def test_ablation_switches_train_and_infer(batch, over):
    torch.manual_seed(9)
    model = QueryPose(tiny_cfg(num_convs=1, **over), COCO)
    images, targets = batch
    losses = model.train()(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    sizes = torch.stack([t["image_size"] for t in targets])
    with torch.no_grad():
        out = model.eval()(images, image_sizes=sizes)
    assert out["keypoints"].shape == (2, 8, 17, 3) and out["scores"].shape == (2, 8)
    assert bool(((out["scores"] >= 0) & (out["scores"] <= 1)).all())


def test_query_handoff_serial_changes_inference_only_for_nonlight(batch):
    torch.manual_seed(10)
    images, targets = batch
    sizes = torch.stack([t["image_size"] for t in targets])
    model = QueryPose(tiny_cfg(), COCO).eval()
    with torch.no_grad():
        official = model(images, image_sizes=sizes)
        model.cfg.query_handoff = "serial"
        serial = model(images, image_sizes=sizes)
    assert not torch.allclose(official["boxes"], serial["boxes"])      # later box stages read the refined query


def test_predict_postprocessing_maps_to_original_pixels(batch):
    torch.manual_seed(11)
    model = QueryPose(tiny_cfg(), COCO).eval()
    images, targets = batch
    metas = []
    for t in targets:
        h, w = t["image_size"].tolist()
        r = 2.0      # the image was downscaled by 2: original = (input + 0.5) * 2 - 0.5 in pixel indices
        metas.append({"input_hw": (h, w), "orig_size": (2 * h, 2 * w),
                      "inverse": np.array([[r, 0, 0.5 * r - 0.5], [0, r, 0.5 * r - 0.5]])})
    with torch.no_grad():
        raw = model(images, image_sizes=torch.stack([t["image_size"] for t in targets]))
        results = model.predict({"images": images, "metas": metas}, EvalOptions(score_threshold=0.0))
    for b, res in enumerate(results):
        idx = torch.as_tensor(res.extras["proposal_index"])
        assert np.all(np.diff(res.scores) <= 0)
        kp = raw["keypoints"][b, idx]
        np.testing.assert_allclose(res.keypoints[..., :2], (kp[..., :2] * 2 - 0.5).numpy(), rtol=1e-5, atol=1e-4)
        h, w = metas[b]["orig_size"]
        assert (res.boxes[:, [0, 2]] >= 0).all() and (res.boxes[:, [0, 2]] <= w).all()
        assert (res.boxes[:, 2] > res.boxes[:, 0]).all()
    top = model.predict({"images": images, "metas": metas}, EvalOptions(score_threshold=0.0, max_people=2))
    assert all(len(r) <= 2 for r in top)
    flip = model.predict({"images": images, "metas": metas}, EvalOptions(flip=True))
    assert [len(r) for r in flip] == [len(r) for r in results]


def test_eval_forward_traces():
    # the official tiny model (well-conditioned weights; random-init decoders amplify rounding chaotically)
    from regpose.compat.querypose import _reference_batch, build_reference_model
    from conftest import REFERENCE

    folder = REFERENCE / "querypose" / "tiny"
    model, _ = build_reference_model(folder)
    batch = _reference_batch(folder, model)
    sizes = torch.tensor([list(m["input_hw"]) for m in batch["metas"]])

    class Wrapped(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, images, sizes):
            out = self.m(images, image_sizes=sizes)
            return out["scores"], out["boxes"], out["keypoints"]

    wrapped = Wrapped(model)
    with torch.no_grad():
        traced = torch.jit.trace(wrapped, (batch["images"][:1], sizes[:1]), check_trace=False)
        # another image size and batch: the trace generalises (no data-dependent Python control flow)
        images, sz = batch["images"][1:, :, :, :160], torch.tensor([[181, 120]])
        for got, ref in zip(traced(images, sz), wrapped(images, sz)):
            # the trace holds the plain ops; eager inference takes the fused / Winograd paths (rounding only)
            torch.testing.assert_close(got, ref, atol=1e-3, rtol=1e-4)


def test_transform_targets_follow_detectron2_convention(real_dir):
    """Test resize: keypoints in input pixels carry detectron2's +0.5 ((x + 0.5) * scale); ``inverse`` maps
    predictions (after the -0.5) back onto the original annotation; train samples have consistent targets."""
    from regpose.config import load_config
    from regpose.data.datasets import build_dataset
    from regpose.models import get_method

    ann = real_dir / "coco" / "test_coco.json"
    cfg = load_config({"method": "querypose", "data": {"format": "coco", "train": {"ann_files": [str(ann)]},
                                                        "val": {"ann_files": [str(ann)]}}})
    spec = get_method("querypose")
    raw = build_dataset(cfg, "val", None, spec.family)
    test = build_dataset(cfg, "val", spec.transform(cfg, False), spec.family)
    for i in range(len(raw)):
        r, s = raw[i], test[i]
        h, w = s["meta"]["input_hw"]
        assert min(h, w) == 800 or max(h, w) == 1333
        assert s["image"].shape == (3, h, w)
        kp = s["target"]["keypoints"].numpy()
        lab = kp[..., 2] > 0
        scale = np.array([w / r["orig_size"][1], h / r["orig_size"][0]])
        np.testing.assert_allclose(kp[..., :2][lab], ((r["keypoints"][..., :2] + 0.5) * scale)[lab], rtol=1e-5)
        inv = s["meta"]["inverse"]
        back = (kp[..., :2] - 0.5) @ inv[:, :2].T + inv[:, 2]
        np.testing.assert_allclose(back[lab], r["keypoints"][..., :2][lab], atol=1e-3)
    train = build_dataset(cfg, "train", spec.transform(cfg, True), spec.family)
    s = train[0]
    t = s["target"]
    assert t["boxes"].shape[0] == t["keypoints"].shape[0] == t["labels"].shape[0]
    assert t["image_size"].tolist() == list(s["meta"]["input_hw"])
    kp = t["keypoints"]
    assert bool((kp[..., :2][kp[..., 2] == 0] == 0).all())          # unlabelled keypoints stay (0, 0, 0)


def test_runtime_section_sets_the_implementation_switches():
    """conv_impl / parallel_chunks / channels_last come from ``runtime:``; the model section refuses them with a
    hint to their new place."""
    from regpose.config import ConfigError, load_config
    from regpose.models import build_model
    from conftest import REPO

    path = REPO / "configs" / "querypose" / "querypose_r18_synthetic.yaml"
    with torch.device("meta"):
        default = build_model(load_config(path))
        changed = build_model(load_config(path, ["runtime.conv_impl=direct", "runtime.parallel_chunks=false",
                                                 "runtime.channels_last=false"]))
    assert (default.conv_impl, default.parallel_chunks, default.channels_last) == ("winograd", True, True)
    assert (changed.conv_impl, changed.parallel_chunks, changed.channels_last) == ("direct", False, False)
    assert all(st.conv_impl == "direct" for st in changed.kpt_stages)
    for key in ("conv_impl", "parallel_chunks", "channels_last"):
        with pytest.raises(ConfigError) as e:
            load_config(path, [f"model.{key}=false"])
        assert str(e.value) == f"unknown config key 'model.{key}' (did you mean 'runtime.{key}'?)"


def test_synthetic_config_trains_a_step():
    from regpose.config import load_config
    from regpose.data.collate import collate
    from regpose.data.synthetic import render_image
    from regpose.models import build_model, get_method
    from conftest import REPO

    cfg = load_config(REPO / "configs" / "querypose" / "querypose_r18_synthetic.yaml")
    torch.manual_seed(0)
    model = build_model(cfg).train()
    assert sum(p.numel() for p in model.parameters()) < 4_000_000
    transform = get_method("querypose").transform(cfg, True)
    rng = np.random.default_rng(0)
    samples = []
    for i in range(2):
        img, anns = render_image(rng, size=(256, 256), max_people=4)
        anns = [a for a in anns if not a["iscrowd"]]
        kp = np.array([a["keypoints"] for a in anns], np.float32).reshape(-1, 17, 3)
        boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                          for a in anns], np.float32).reshape(-1, 4)
        samples.append(transform({"image": img, "image_id": i, "file_name": "x", "sample_index": i,
                                  "orig_size": (256, 256), "keypoints": kp, "boxes": boxes,
                                  "areas": np.ones(len(kp), np.float32), "iscrowd": np.zeros(len(kp), bool),
                                  "num_keypoints": np.full(len(kp), 17), "ann_ids": np.arange(len(kp))}))
    batch = collate(samples, model.size_divisibility)
    losses = model(batch["images"], batch["targets"])
    assert len(losses) == 4 * cfg.model.num_stages and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        strict = model.predict(batch, EvalOptions(score_threshold=1.0))
    assert all(len(r) == 0 and r.keypoints.shape == (0, 17, 3) for r in strict)


def test_parallel_keypoint_chains_equal_sequential_and_use_winograd(monkeypatch):
    import regpose.models.querypose.keypoint_decoder as kd
    import regpose.models.querypose.model as qp
    from regpose.compat.querypose import _reference_batch, build_reference_model
    from conftest import REFERENCE

    folder = REFERENCE / "querypose" / "tiny"
    model, _ = build_reference_model(folder)
    batch = _reference_batch(folder, model)
    sizes = torch.tensor([list(m["input_hw"]) for m in batch["metas"]])
    calls = []
    real = kd.winograd_conv_relu_tower
    monkeypatch.setattr(kd, "winograd_conv_relu_tower", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.inference_mode():
        feats = model.features(batch["images"])
        boxes = model.initial_boxes(sizes)
        query = qp._batched(model.init_proposal_features.weight, 2)
        stage_boxes, stage_queries = [], []
        for s in range(model.cfg.num_stages):
            _, boxes, query = model.box_stage(s, feats, boxes, query)
            stage_boxes.append(boxes)
            stage_queries.append(query)
        flat = torch.arange(16)
        seq = model._keypoint_chains(feats[0], stage_boxes, stage_queries, flat, True)    # 1 thread: in order
        torch.set_num_threads(2)
        par = model._keypoint_chains(feats[0], stage_boxes, stage_queries, flat, True)    # 2 worker threads
    # 16 proposals in chunks of 4, S stages each, twice; worker threads inherit the caller's inference mode,
    # so they take the Winograd path too
    assert len(calls) == 2 * 4 * model.cfg.num_stages
    for key in ("mu", "sigma"):
        torch.testing.assert_close(par[key], seq[key], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(par["stage_part_query"][0], seq["stage_part_query"][0], atol=1e-5, rtol=1e-5)


def test_flop_counter_sees_plain_ops():
    from torch.utils.flop_counter import FlopCounterMode

    model = QueryPose(tiny_cfg(), COCO).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, 64, 96))
    counts = counter.get_flop_counts()["Global"]
    assert any("convolution" in str(op) for op in counts)       # plain convs under a dispatch mode (no Winograd)
