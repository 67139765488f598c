"""Bad input across the command line (issue 18, must-show 4): ``train``, ``test``, ``infer``, ``evaluate``,
``analyze`` and ``export`` on tiny generated data, driven through ``regpose.cli.main`` in-process.

Every case must exit non-zero with exactly one stderr line (progress bars and timestamped log records aside) that
names the offending file / field, without a traceback, and leave what an earlier run wrote (results, metrics, a
model, a run folder) byte for byte as it was. Mixed calls (good and bad inputs together) must process the good
ones. Cases whose fix lives on another branch are strict xfails naming that branch: they flip when it is merged.
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from regpose.cli import main
from regpose.config import load_config
from regpose.data.synthetic import generate
from regpose.models import build_model

sys.path.insert(0, str(Path(__file__).resolve().parent / "inference"))
from _tiny import write_tiny  # noqa: E402
from conftest import REAL  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RLE_CONFIG = str(REPO / "configs" / "rle" / "rle_tiny_synthetic.yaml")
PICTURE = REAL / "coco" / "000000000785.jpg"

pytestmark = pytest.mark.usefixtures("single_thread")


@dataclass
class Env:
    """Files shared by every case: tiny models, a tiny synthetic split, its trained-shape weights, bad files."""
    root: Path
    qp: tuple[Path, Path]            # querypose config, weights (one-stage)
    rle: tuple[Path, Path]           # rle config, weights (top-down)
    ann: Path                        # a good COCO keypoint json of 6 synthetic images
    images: Path
    data: list[str]                  # overrides: the rle synthetic config on this split, CPU-sized
    weights: Path                    # weights of that config
    gt: dict                         # the annotation json, loaded
    mpii: Path                       # a good MPII json (3 synthetic images)

    def bad(self, name: str, content) -> Path:
        """A file under ``bad/`` holding ``content`` (bytes, text, or anything JSON)."""
        p = self.root / "bad" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        elif isinstance(content, str):
            p.write_text(content)
        else:
            p.write_text(json.dumps(content))
        return p

    def gt_with(self, name: str, **ann_changes) -> Path:
        """The annotation json with every annotation updated (a value that is a callable maps the old one)."""
        data = json.loads(json.dumps(self.gt))
        for a in data["annotations"]:
            a.update({k: (v(a[k]) if callable(v) else v) for k, v in ann_changes.items()})
        return self.bad(name, data)

    def results(self, name: str | None = None, **changes) -> Path:
        """COCO results equal to the ground truth (a perfect prediction), every entry updated with ``changes``."""
        res = [{"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
               for a in self.gt["annotations"]]
        for r in res:
            r.update({k: (v(r[k]) if callable(v) else v) for k, v in changes.items()})
        return self.bad(name or "results.json", res)

    def mpii_results(self, name: str, **changes) -> Path:
        """MPII results equal to the ground truth (0-based pixels), every entry updated with ``changes``."""
        res = [{"image_id": int(Path(p["image"]).stem), "score": 1.0,
                "keypoints": [v for x, y in p["joints"] for v in (x - 1, y - 1, 1)]}
               for p in json.loads(self.mpii.read_text())]
        for r in res:
            r.update(changes)
        return self.bad(name, res)

    def mpii_with(self, name: str, **changes) -> Path:
        data = json.loads(self.mpii.read_text())
        for p in data:
            p.update(changes)
        return self.bad(name, data)


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Env:
    root = tmp_path_factory.mktemp("matrix")
    ann = Path(generate(root / "syn", 6, seed=0, size=(96, 96), max_people=2, progress=False))
    data = [f"data.train.ann_files=[{ann}]", f"data.train.image_dir={ann.parent / 'images'}",
            f"data.val.ann_files=[{ann}]", f"data.val.image_dir={ann.parent / 'images'}",
            "data.train.synthetic.num_images=0", "data.val.synthetic.num_images=0",
            "train.iters=1", "train.num_workers=0", "train.batch_size=4", "train.warmup_iters=0",
            "test.batch_size=8", "model.backbone.kwargs.channels=[8,16,32,64]",
            "model.backbone.kwargs.stem_width=8"]
    weights = root / "rle_synth.pth"
    torch.save({"model": build_model(load_config(RLE_CONFIG, data)).state_dict()}, weights)
    models = root / "models"
    mpii = Path(generate(root / "mpii", 3, seed=0, fmt="mpii", size=(96, 96), max_people=2, progress=False))
    return Env(root, write_tiny("querypose", models / "qp"), write_tiny("rle", models / "rle"), ann,
               ann.parent / "images", data, weights, json.loads(ann.read_text()), mpii)


@pytest.fixture
def prev(tmp_path) -> Path:
    """What earlier runs left in the output locations the cases write to: results, metrics, a model, a run."""
    files = {"infer/results.json": '{"images": {}}', "infer/results_coco.json": "[]", "infer/vis/a.jpg": "jpeg",
             "model.onnx": "an earlier export", "metrics.json": '{"AP": 0.5}',
             "test/results_val.json": "[]", "test/metrics_val.json": '{"AP": 0.5}',
             "run/config.yaml": "method: rle\n", "run/last.pth": "state", "run/model_final.pth": "weights",
             "run/metrics.jsonl": '{"iter": 1}\n'}
    for name, text in files.items():
        (tmp_path / "prev" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "prev" / name).write_text(text)
    (tmp_path / "afile").write_text("a file, not a folder")
    return tmp_path / "prev"


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


_NOISE = re.compile(r"(\d+%\|)|(\d+(/\d+|\.\d+)?\s*\[[\d:<?]+.*\])|(^\[\d\d:\d\d:\d\d regpose[\w.]*\])")


def _message_lines(stderr: str) -> list[str]:
    """What a user reads on stderr: every line and carriage-return segment, except progress bars and
    timestamped log records."""
    parts = [seg.strip() for line in stderr.split("\n") for seg in line.split("\r")]
    return [p for p in parts if p and not _NOISE.search(p)]


def _run(argv: list[str], capfd) -> tuple[int, list[str], str, str]:
    try:
        code = main(argv)
    except SystemExit as e:        # argparse usage errors
        code = e.code
    out, err = capfd.readouterr()
    return code, _message_lines(err), err, out


# ----------------------------------------------------------------------------------------------------------
# The cases: (id, argv builder (env, prev, tmp) -> argv, names the error line must contain)
# ----------------------------------------------------------------------------------------------------------
def _extra(extra, e: Env) -> list[str]:
    """Extra arguments: a list, or a function of the environment making one (files are made on demand)."""
    return list(extra(e) if callable(extra) else extra)


def _train(extra=(), out=None):
    return lambda e, p, t: ["train", RLE_CONFIG, "--output-dir", str(out(p, t) if out else t / "new_run"),
                            *e.data, *_extra(extra, e)]


def _test(extra=(), weights=None, out=None):
    return lambda e, p, t: ["test", RLE_CONFIG, "--weights", str(weights(e) if weights else e.weights),
                            "--output-dir", str(out(p, t) if out else p / "test"), *e.data, *_extra(extra, e)]


def _infer(model="qp", inputs=lambda e: [str(PICTURE)], extra=(), weights=None, out=None):
    def argv(e, p, t):
        cfg, w = getattr(e, model)
        return ["infer", str(cfg), *inputs(e), "--weights", str(weights(e) if weights else w),
                "--out", str(out(p, t) if out else p / "infer"), "--no-progress", *_extra(extra, e)]
    return argv


def _evaluate(gt=None, res=None, extra=(), command="evaluate", out=None):
    return lambda e, p, t: [command, "--gt", str(gt(e) if gt else e.ann), "--results",
                            str(res(e) if res else e.results()), "--json-out",
                            str(out(p, t) if out else p / "metrics.json"), *extra]


def _export(model="qp", extra=(), weights=None, out=None):
    def argv(e, p, t):
        cfg, w = getattr(e, model)
        return ["export", str(cfg), "--weights", str(weights(e) if weights else w),
                "--out", str(out(p, t) if out else p / "model.onnx"), *extra]
    return argv


def _evil_checkpoint(e: Env) -> Path:
    """A checkpoint that pickles a call to print(): refused by weights_only loading, never executed."""
    class Evil:
        def __reduce__(self):
            return (print, ("this ran",))
    path = e.root / "bad" / "evil.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {"w": torch.zeros(1)}, "extra": Evil()}, path)
    return path


def _corrupt_image(e: Env) -> Path:
    """A copy of the synthetic images whose second one is garbage after the JPEG marker (no decoder reads it)."""
    folder = e.root / "corrupt_images"
    if not folder.exists():
        folder.mkdir()
        for f in e.images.iterdir():
            data = f.read_bytes()
            (folder / f.name).write_bytes(data[:2] + bytes(3000) if f.name == "000002.jpg" else data)
    return folder


def _nan_first(keypoints: list) -> list:
    """The first keypoint's x made NaN (labelled in the first synthetic person: its error names annotation 1)."""
    return [float("nan")] + keypoints[1:]


PROC = "/proc/regpose-no-such-folder/out"       # cannot be created, not even by root
TEXT = b"this is not a checkpoint\n"

CASES = [
    # ---- train
    ("train-config-missing", lambda e, p, t: ["train", str(t / "nope.yaml")], ["nope.yaml"]),
    ("train-config-not-a-mapping", lambda e, p, t: ["train", str(e.bad("list.yaml", "- a\n- b\n"))],
     ["list.yaml"]),
    ("train-unknown-key", _train(["train.bacth_size=2"]), ["train.bacth_size"]),
    ("train-wrong-type", _train(["train.lr=fast"]), ["train.lr"]),
    ("train-override-without-value", _train(["train.lr"]), ["train.lr"]),
    ("train-ann-missing", _train(lambda e: [f"data.train.ann_files=[{e.root / 'missing.json'}]"]),
     ["missing.json"]),
    ("train-ann-corrupt", _train(lambda e: [f"data.train.ann_files=[{e.bad('c.json', 'not json')}]"]),
     ["c.json"]),
    ("train-ann-wrong-schema",
     _train(lambda e: [f"data.train.ann_files=[{e.bad('l.json', e.gt['annotations'])}]"]), ["l.json"]),
    ("train-ann-wrong-keypoint-count",
     _train(lambda e: [f"data.train.ann_files=[{e.gt_with('k14.json', keypoints=lambda k: k[:42])}]"]),
     ["k14.json", "42"]),
    ("train-images-missing", _train(lambda e: [f"data.train.image_dir={e.root / 'noimages'}"]),
     ["noimages"]),
    ("train-out-unwritable", _train(out=lambda p, t: PROC), ["--output-dir", PROC]),
    ("train-out-below-a-file", _train(out=lambda p, t: t / "afile" / "run"), ["--output-dir", "afile"]),
    ("train-init-weights-not-a-checkpoint",
     _train(lambda e: [f"train.init_weights={e.bad('text.pth', TEXT)}"]), ["text.pth"]),
    # an HRNet (DEKR) checkpoint shares nothing with the ResNet model: loading (almost) nothing is an error (a
    # checkpoint whose trunk fits, e.g. QueryPose's ResNet, loads partially with a report: tests/engine)
    ("train-init-weights-of-another-method",
     _train(lambda e: [f"train.init_weights={write_tiny('dekr', e.root / 'models' / 'dekr')[1]}"]), ["dekr.pth"]),
    ("train-into-an-existing-run", _train(out=lambda p, t: p / "run"), ["--resume"]),
    ("train-empty-training-set",
     _train(lambda e: [f"data.train.ann_files=[{e.bad('noann.json', {**e.gt, 'annotations': []})}]"]),
     ["noann.json"]),
    ("train-batch-size-0", _train(["train.batch_size=0"]), ["train.batch_size"]),
    ("train-lr-nan", _train(["train.lr=nan"]), ["train.lr"]),
    ("train-non-finite-ground-truth",
     _train(lambda e: [f"data.train.ann_files=[{e.gt_with('nan.json', keypoints=_nan_first)}]"]), ["nan.json"]),
    ("train-corrupt-image",               # batch 6: every image of the split is read
     _train(lambda e: [f"data.train.image_dir={_corrupt_image(e)}", "train.batch_size=6"]), ["000002.jpg"]),
    ("train-corrupt-image-in-a-worker",
     _train(lambda e: [f"data.train.image_dir={_corrupt_image(e)}", "train.batch_size=6", "train.num_workers=1"]),
     ["000002.jpg"]),
    ("train-unknown-backbone", _train(["model.backbone=resnet999"]), ["resnet999"]),
    # ---- test
    ("test-weights-missing", _test(weights=lambda e: e.root / "nope.pth"), ["nope.pth"]),
    ("test-weights-not-a-checkpoint", _test(weights=lambda e: e.bad("text.pth", TEXT)), ["text.pth"]),
    ("test-weights-of-another-method", _test(weights=lambda e: e.qp[1]), ["querypose.pth"]),
    ("test-weights-with-code", _test(weights=_evil_checkpoint), ["evil.pth", "refused"]),
    ("test-out-unwritable", _test(out=lambda p, t: PROC), ["--output-dir", PROC]),
    ("test-out-is-a-file", _test(out=lambda p, t: t / "afile"), ["--output-dir", "afile"]),
    ("test-gt-corrupt", _test(lambda e: [f"data.val.ann_files=[{e.bad('c.json', 'not json')}]"]), ["c.json"]),
    ("test-gt-wrong-keypoint-count",
     _test(lambda e: [f"data.val.ann_files=[{e.gt_with('k14.json', keypoints=lambda k: k[:42])}]"]), ["k14.json"]),
    ("test-scales-zero", _test(["--scales", "0"]), ["--scales"]),
    ("test-bad-override", _test(["test.flipp=true"]), ["test.flipp"]),
    # ---- infer
    ("infer-config-missing", lambda e, p, t: ["infer", str(t / "nope.yaml"), str(PICTURE), "--weights",
                                              str(e.qp[1]), "--out", str(p / "infer")], ["nope.yaml"]),
    ("infer-weights-missing", _infer(weights=lambda e: e.root / "nope.pth"), ["nope.pth"]),
    ("infer-weights-not-a-checkpoint", _infer(weights=lambda e: e.bad("text.pth", TEXT)), ["text.pth"]),
    ("infer-weights-of-another-method", _infer(weights=lambda e: e.rle[1]), ["rle.pth"]),
    ("infer-onnx-not-a-model", _infer(weights=lambda e: e.bad("text.onnx", TEXT)), ["text.onnx"]),
    ("infer-out-unwritable", _infer(out=lambda p, t: PROC), ["--out", PROC]),
    ("infer-out-below-a-file", _infer(out=lambda p, t: t / "afile" / "out"), ["--out", "afile"]),
    ("infer-bad-set", _infer(extra=["--set", "test.flipp=1"]), ["test.flipp"]),
    ("infer-batch-size-0", _infer(extra=["--batch-size", "0"]), ["--batch-size"]),
    ("infer-threads-negative", _infer(extra=["--threads", "-1"]), ["--threads"]),
    ("infer-max-frames-negative", _infer(extra=["--max-frames", "-1"]), ["--max-frames"]),
    ("infer-score-threshold-nan", _infer(extra=["--score-threshold", "nan"]), ["--score-threshold"]),
    ("infer-device-unknown", _infer(extra=["--device", "tpu"]), ["--device"]),
    ("infer-topdown-without-boxes", _infer("rle"), ["--boxes"]),
    ("infer-detector-is-topdown", _infer("rle", extra=lambda e: ["--detector", str(e.rle[0])]),
     ["--detector", "rle.yaml"]),
    ("infer-boxes-missing", _infer("rle", extra=lambda e: ["--boxes", str(e.root / "nodets.json")]),
     ["nodets.json"]),
    ("infer-boxes-corrupt", _infer("rle", extra=lambda e: ["--boxes", str(e.bad("d.json", "[{"))]), ["d.json"]),
    ("infer-boxes-wrong-schema", _infer("rle", extra=lambda e: ["--boxes", str(e.bad("d.json", {"a": 1}))]),
     ["d.json"]),
    ("infer-boxes-null-score", _infer("rle", extra=lambda e: ["--boxes", str(e.bad(
        "d.json", [{"image_id": 785, "bbox": [1, 2, 3, 4], "score": None}]))]), ["d.json", "entry 0", "score"]),
    ("infer-boxes-bbox-text", _infer("rle", extra=lambda e: ["--boxes", str(e.bad(
        "d.json", [{"image_id": 785, "bbox": "1,2,3,4", "score": 1}]))]), ["d.json", "entry 0", "bbox"]),
    ("infer-boxes-with-a-video-and-images", _infer("rle", inputs=lambda e: [
        str(PICTURE), str(e.bad("v.mp4", b""))], extra=lambda e: ["--boxes", str(e.bad(
            "d.json", [{"image_id": 0, "bbox": [1, 2, 3, 4], "score": 1}]))]), ["--boxes", "frame index"]),
    ("infer-nothing-readable", _infer(inputs=lambda e: [str(e.bad("x.jpg", "text"))]), ["x.jpg"]),
    # ---- evaluate / analyze
    ("evaluate-gt-missing", _evaluate(gt=lambda e: e.root / "nogt.json"), ["nogt.json"]),
    ("evaluate-gt-empty-file", _evaluate(gt=lambda e: e.bad("empty.json", b"")), ["empty.json"]),
    ("evaluate-gt-binary", _evaluate(gt=lambda e: e.bad("bin.json", bytes(range(256)))), ["bin.json"]),
    ("evaluate-gt-wrong-schema", _evaluate(gt=lambda e: e.bad("l.json", e.gt["annotations"])), ["l.json"]),
    ("evaluate-gt-wrong-keypoint-count", _evaluate(gt=lambda e: e.gt_with("k14.json", keypoints=lambda k: k[:42])),
     ["k14.json", "annotation 1"]),
    ("evaluate-gt-non-finite", _evaluate(gt=lambda e: e.gt_with("nan.json", keypoints=_nan_first)),
     ["nan.json", "annotation 1"]),
    ("evaluate-gt-without-annotations", _evaluate(gt=lambda e: e.bad("noann.json", {**e.gt, "annotations": []})),
     ["noann.json"]),
    ("evaluate-results-missing", _evaluate(res=lambda e: e.root / "nores.json"), ["nores.json"]),
    ("evaluate-results-corrupt", _evaluate(res=lambda e: e.bad("r.json", "[{")), ["r.json"]),
    ("evaluate-results-wrong-schema", _evaluate(res=lambda e: e.bad("r.json", {"annotations": []})), ["r.json"]),
    ("evaluate-results-wrong-keypoint-count", _evaluate(res=lambda e: e.results("r.json", keypoints=lambda k: k[:42])),
     ["r.json", "entry 0", "42"]),
    ("evaluate-results-unknown-image", _evaluate(res=lambda e: e.results("r.json", image_id=999)),
     ["r.json", "999"]),
    ("evaluate-results-nan", _evaluate(res=lambda e: e.results("r.json", keypoints=lambda k: [float("nan")] * 51)),
     ["r.json", "entry 0"]),
    ("evaluate-results-null-score", _evaluate(res=lambda e: e.results("r.json", score=None)),
     ["r.json", "entry 0", "null"]),
    ("evaluate-wrong-dataset", _evaluate(extra=["--dataset", "crowdpose"]), ["annotations.json", "crowdpose"]),
    ("evaluate-json-out-unwritable", _evaluate(out=lambda p, t: PROC + "/m.json"), ["--json-out", PROC]),
    ("evaluate-json-out-is-a-folder", _evaluate(out=lambda p, t: p), ["--json-out", "prev"]),
    ("evaluate-mpii-keypoints-not-numbers", _evaluate(
        gt=lambda e: e.mpii, res=lambda e: e.mpii_results("r.json", keypoints=["a"] * 48), extra=["--dataset", "mpii"]),
     ["r.json", "entry 0", "keypoints"]),
    ("evaluate-mpii-null-score", _evaluate(
        gt=lambda e: e.mpii, res=lambda e: e.mpii_results("r.json", score=None), extra=["--dataset", "mpii"]),
     ["r.json", "entry 0", "score"]),
    ("evaluate-mpii-results-binary", _evaluate(
        gt=lambda e: e.mpii, res=lambda e: e.bad("bin.json", bytes(range(256))), extra=["--dataset", "mpii"]),
     ["bin.json"]),
    ("evaluate-mpii-gt-joints-without-y", _evaluate(
        gt=lambda e: e.mpii_with("gt.json", joints=[[1.0]] * 16), res=lambda e: e.mpii_results("r.json"),
        extra=["--dataset", "mpii"]), ["gt.json", "entry 0", "joints"]),
    ("evaluate-mpii-gt-non-finite", _evaluate(
        gt=lambda e: e.mpii_with("gt.json", joints=[[float("nan"), 1.0]] * 16), res=lambda e: e.mpii_results("r.json"),
        extra=["--dataset", "mpii"]), ["gt.json", "entry 0"]),
    ("analyze-results-wrong-keypoint-count",
     _evaluate(res=lambda e: e.results("r.json", keypoints=lambda k: k[:42]), command="analyze"), ["r.json"]),
    ("analyze-gt-non-finite", _evaluate(gt=lambda e: e.gt_with("nan.json", keypoints=_nan_first),
                                        command="analyze"), ["nan.json"]),
    ("analyze-json-out-unwritable", _evaluate(out=lambda p, t: PROC + "/a.json", command="analyze"),
     ["--json-out", PROC]),
    # ---- export
    ("export-weights-missing", _export(weights=lambda e: e.root / "nope.pth"), ["nope.pth"]),
    ("export-weights-not-a-checkpoint", _export(weights=lambda e: e.bad("text.pth", TEXT)), ["text.pth"]),
    ("export-weights-of-another-method", _export(weights=lambda e: e.rle[1]), ["rle.pth"]),
    ("export-out-unwritable", _export(out=lambda p, t: PROC + "/m.onnx"), ["--out", PROC]),
    ("export-out-is-a-folder", _export(out=lambda p, t: p), ["--out", "prev"]),
    ("export-input-size-not-a-multiple", _export(extra=["--input-size", "100x150"]), ["--input-size", "32"]),
    ("export-input-size-zero", _export(extra=["--input-size", "0x64"]), ["--input-size"]),
    ("export-batch-size-0", _export(extra=["--batch-size", "0"]), ["--batch-size"]),
    ("export-opset-unsupported", _export(extra=["--opset", "5"]), ["--opset"]),
    ("export-bad-set", _export(extra=["--set", "model.nope=1"]), ["model.nope"]),
]


@pytest.mark.parametrize("case, argv, names", [pytest.param(*c[:3], id=c[0], marks=c[3:]) for c in CASES])
def test_bad_input_is_one_line_naming_it_and_loses_nothing(case, argv, names, env, prev, tmp_path, capfd):
    before = _snapshot(prev)
    code, lines, err, out = _run([str(a) for a in argv(env, prev, tmp_path)], capfd)
    assert code not in (0, None), f"{case}: exit status 0\n{out}\n{err[-2000:]}"
    assert "Traceback" not in err, err[-3000:]
    assert len(lines) == 1, f"{case}: expected one line, got {lines}"
    for name in names:
        assert name in lines[0], f"{case}: {name!r} not in {lines[0]!r}"
    assert _snapshot(prev) == before, f"{case}: an earlier run's files changed"


# ----------------------------------------------------------------------------------------------------------
# Good and bad inputs in one call: one line per bad input, the good ones processed
# ----------------------------------------------------------------------------------------------------------
def _video(path: Path) -> Path:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (64, 48))
    for _ in range(3):
        w.write(np.full((48, 64, 3), 90, np.uint8))
    w.release()
    return path


def _copy(path: Path, source: Path = PICTURE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(source.read_bytes())
    return path


def _bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


BOX = {"bbox": [270.0, 45.0, 230.0, 335.0], "score": 0.9, "category_id": 1}
MIXED = [
    # (id, model, bad inputs maker (folder) -> paths, detections for --boxes or None, names: one line each)
    ("corrupt-jpeg", "qp", lambda d: [_bytes(d / "c.jpg", PICTURE.read_bytes()[:2] + bytes(3000))], None,
     ["c.jpg"]),
    ("text-named-jpg", "qp", lambda d: [_bytes(d / "t.jpg", b"hello\n")], None, ["t.jpg"]),
    ("empty-file", "qp", lambda d: [_bytes(d / "e.png", b"")], None, ["e.png"]),
    ("unreadable-video", "qp", lambda d: [_bytes(d / "v.mp4", b"not a video")], None, ["v.mp4"]),
    ("missing-path", "qp", lambda d: [d / "gone.jpg"], None, ["gone.jpg"]),
    ("name-that-is-no-id", "rle", lambda d: [_copy(d / "b.jpg")], [{"image_id": 785, **BOX}], ["b.jpg"]),
    ("name-without-an-image-entry", "rle", lambda d: [_copy(d / "b.jpg")],
     {"images": [{"id": 785, "file_name": "000000000785.jpg"}], "annotations": [{"image_id": 785, **BOX}]},
     ["b.jpg"]),
    ("two-inputs-one-id", "rle", lambda d: [_copy(d / "a" / "7.jpg"), _copy(d / "b" / "0007.jpg")],
     [{"image_id": 785, **BOX}, {"image_id": 7, **BOX}], ["7.jpg", "0007.jpg"]),
]


@pytest.mark.parametrize("case, model, make_bad, detections, names", MIXED, ids=[m[0] for m in MIXED])
def test_bad_inputs_next_to_good_ones(case, model, make_bad, detections, names, env, tmp_path, capfd):
    good = _copy(tmp_path / "in" / "000000000785.jpg")
    video = _video(tmp_path / "in" / "clip.mp4") if model == "qp" else None    # --boxes serves a video alone
    bad = make_bad(tmp_path / "in")
    cfg, weights = getattr(env, model)
    extra = ["--boxes", str(env.bad(f"{case}.json", detections))] if detections else []
    out = tmp_path / "out"
    code, lines, err, _ = _run(["infer", str(cfg), str(good), *map(str, bad), *([str(video)] if video else []),
                                "--weights", str(weights), "--out", str(out), "--no-progress", *extra], capfd)
    assert code == 0 and "Traceback" not in err, err[-2000:]
    assert len(lines) == len(names) and all(n in l for n, l in zip(names, lines)), lines
    res = json.loads((out / "results.json").read_text())
    assert list(res["images"]) == [str(good)] and res["images"][str(good)]["image_id"] == 785
    assert list(res["videos"]) == ([str(video)] if video else [])


def test_a_bad_validation_image_is_skipped_and_counted(env, tmp_path, capfd):
    """``test`` with one undecodable image among the validation images: the others are evaluated, one line names
    the bad one (issue 18 item 5)."""
    out = tmp_path / "test"
    code, lines, err, _ = _run(["test", RLE_CONFIG, "--weights", str(env.weights), "--output-dir", str(out),
                                *env.data, f"data.val.image_dir={_corrupt_image(env)}"], capfd)
    assert code == 0 and "Traceback" not in err, err[-2000:]
    assert len(lines) == 1 and "000002.jpg" in lines[0], lines
    assert (out / "metrics_val.json").is_file()
