"""ONNX export of every method and the ONNX Runtime backend: graph outputs equal PyTorch's (max abs diff <= 1e-4 for
unit-scale outputs; for pixel-valued outputs <= 1e-4 x their magnitude, i.e. fp32 rounding: QueryPose keypoints
differ by ~1.4e-4 at ~250 px, the DEKR reference model's offsets by ~2e-4 at 16 px because its backbone features
reach ~70), and the method's own decoding on ONNX Runtime gives the
same people as on PyTorch (flip test and, for DEKR, multi-scale included: dynamic batch / height / width)."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from regpose.data.collate import collate
from regpose.data.datasets import load_detections, read_image
from regpose.errors import InputError
from regpose.inference.export import export_onnx, flatten_outputs, describe_outputs, network_input_names
from regpose.inference.onnx_backend import OnnxRuntimeNetwork, attach_onnx, read_metadata
from regpose.inference.runner import PoseRunner, image_sample as make_sample
from regpose.models.registry import get_method
from _tiny import METHODS, TOPDOWN, tiny
from conftest import REAL

COCO = REAL / "coco"
IMAGE = COCO / "000000196141.jpg"


pytestmark = pytest.mark.usefixtures("single_thread")


def _transform(cfg):
    """The method's test transform; TFPose's crop pipeline is the shared top-down one until its own lands."""
    try:
        return get_method(cfg.method).transform(cfg, False)
    except NotImplementedError:
        if cfg.method == "tfpose":
            from regpose.models.topdown_regression import topdown_regression_transform
            return topdown_regression_transform(cfg, False)
        return None


def _whole_image_batch(cfg, model, images):
    """Real pictures as the method's test batch (identity-meta resize when its transform is not there yet)."""
    transform = _transform(cfg)
    samples = []
    for i, img in enumerate(images):
        if transform is not None:
            s = make_sample(transform, img, i, "", model.num_keypoints)
        else:
            import cv2
            from regpose.data.transforms import to_tensor_normalize
            h, w = 128, 160
            small = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
            sy, sx = img.shape[0] / h, img.shape[1] / w
            s = {"image": to_tensor_normalize(small), "meta": {
                "image_id": i, "sample_index": i, "file_name": "", "orig_size": img.shape[:2], "input_hw": (h, w),
                "inverse": np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5]])}}
        samples.append(s)
    return collate(samples, getattr(model, "size_divisibility", 1))


def _graph_inputs(cfg, model):
    """Realistic inputs of a batch of two at a size other than the export example."""
    if cfg.method in TOPDOWN:
        dets = load_detections(COCO / "test_coco_det_AP_H_56.json")[196141][:2]
        runner = PoseRunner(model, cfg)
        runner.transform = _transform(cfg)
        samples = runner.samples(read_image(IMAGE), 196141, "", dets)
        batch = collate(samples)
    else:
        batch = _whole_image_batch(cfg, model, [read_image(IMAGE), read_image(COCO / "000000000785.jpg")])
    inputs = {"images": batch["images"]}
    if "image_sizes" in network_input_names(model.export_module()):
        inputs["image_sizes"] = torch.tensor([list(m["input_hw"]) for m in batch["metas"]])
    return inputs


# Modules used in training only: they must not reach the exported graph (parameter names survive the export).
TRAINING_ONLY = {"querypose": ["net.flow."], "dekr": [], "directpose": ["net.heatmap_head."],
                 "poseur": ["net.coarse_flow.", "net.decoder_flow."], "rle": ["net.flow."], "tfpose": ["net.aux_head."]}


@pytest.mark.parametrize("method", METHODS)
def test_graph_outputs_equal_pytorch(method, tmp_path):
    cfg, model = tiny(method)
    path = tmp_path / f"{method}.onnx"
    result = export_onnx(model, cfg, path, dynamic=True)
    meta = read_metadata(path)
    assert meta["method"] == method and meta["dynamic"] is True
    inputs = _graph_inputs(cfg, model)
    with torch.no_grad():
        extras = {k: v for k, v in inputs.items() if k != "images"}
        out = model(inputs["images"], **extras)
    ref = flatten_outputs(out, describe_outputs(out))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {k: v.numpy() for k, v in inputs.items()})
    assert [o.name for o in sess.get_outputs()] == result.output_names
    for name, r, g in zip(result.output_names, ref, got):
        r = r.numpy()
        assert g.shape == r.shape, name
        scale = max(1.0, float(np.abs(r).max()) if r.size else 1.0)
        assert np.abs(g.astype(np.float64) - r).max() <= 1e-4 * scale, (name, np.abs(g - r).max(), scale)
    assert not result.suspicious(), (result.max_abs_diff, result.max_abs_value)   # the export's own check agrees
    import onnx
    names = [i.name for i in onnx.load(str(path)).graph.initializer]
    assert any(n.startswith("net.") for n in names)
    assert not [n for n in names for t in TRAINING_ONLY[method] if n.startswith(t)]
    for prefix in TRAINING_ONLY[method]:       # the modules exist in the model, so the check is not vacuous
        assert any(("net." + k).startswith(prefix) for k in model.state_dict())


def _people(results):
    return [(r.boxes, r.keypoints, r.scores) for r in results]


@pytest.mark.parametrize("method", METHODS)
def test_onnx_backend_gives_the_same_people(method, tmp_path):
    cfg, model = tiny(method)
    cfg.test.flip = True
    if method == "dekr":
        cfg.test.scales = [1.0, 0.5]          # multi-scale: other heights / widths through the same graph
    path = tmp_path / f"{method}.onnx"
    export_onnx(model, cfg, path, dynamic=True, verify=False)
    _, onnx_model = tiny(method)
    attach_onnx(onnx_model, OnnxRuntimeNetwork(path), method)
    image = read_image(IMAGE)
    outs = []
    for m in (model, onnx_model):
        if method in TOPDOWN:
            dets = load_detections(COCO / "test_coco_det_AP_H_56.json")[196141]
            runner = PoseRunner(m, cfg, batch_size=8)
            runner.transform = _transform(cfg)
            outs.append(runner([image], [196141], boxes=[dets]))
        else:
            batch = _whole_image_batch(cfg, m, [image, read_image(COCO / "000000000785.jpg")])
            metas = [dict(x) for x in batch["metas"]]
            outs.append([m.finalize(r, x) for r, x in zip(m.predict(batch, cfg.test), metas)])
    assert sum(len(r) for r in outs[0]) > 0, "the tiny model found nobody: the comparison would be empty"
    for (b0, k0, s0), (b1, k1, s1) in zip(_people(outs[0]), _people(outs[1])):
        assert len(s0) == len(s1)
        np.testing.assert_allclose(s1, s0, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(k1[..., :2], k0[..., :2], atol=2e-3)
        np.testing.assert_allclose(k1[..., 2], k0[..., 2], atol=1e-4)
        np.testing.assert_allclose(b1, b0, atol=2e-3)


def test_static_export_runs_other_batches_and_rejects_other_sizes(tmp_path):
    cfg, model = tiny("rle")
    path = tmp_path / "rle_static.onnx"
    export_onnx(model, cfg, path, dynamic=False)
    net = OnnxRuntimeNetwork(path)
    assert net.static_batch == 1 and net.static_hw == (64, 48)
    x = torch.randn(3, 3, 64, 48)
    with torch.no_grad():
        mu, sigma = model(x)
    mu_o, sigma_o = net(x)                              # three chunks of the static batch 1
    np.testing.assert_allclose(mu_o.numpy(), mu.numpy(), atol=1e-5)
    np.testing.assert_allclose(sigma_o.numpy(), sigma.numpy(), atol=1e-5)
    with pytest.raises(InputError, match="export with --dynamic"):
        net(torch.randn(1, 3, 96, 48))


def test_backend_refuses_a_model_of_another_method(tmp_path):
    cfg, model = tiny("rle")
    path = tmp_path / "rle.onnx"
    export_onnx(model, cfg, path, verify=False)
    _, poseur = tiny("poseur")
    with pytest.raises(Exception, match="exported from method 'rle'"):
        attach_onnx(poseur, OnnxRuntimeNetwork(path), "poseur")


def test_a_failed_export_leaves_the_existing_model_as_it_was(tmp_path):
    """Opset 5 traces, but ONNX Runtime refuses the graph at verification. Main had already written the broken
    graph over the user's model; the export now goes to a temporary file renamed only once verified."""
    from regpose.errors import RegposeError

    cfg, model = tiny("rle")
    path = tmp_path / "rle.onnx"
    export_onnx(model, cfg, path)
    before = path.read_bytes()
    with pytest.raises(RegposeError, match="cannot load ONNX model"):
        export_onnx(model, cfg, path, opset=5)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["rle.onnx"]
    OnnxRuntimeNetwork(path)                               # still the good model
