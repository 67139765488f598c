"""``regpose infer`` and ``regpose export`` (wired into :mod:`regpose.cli.main`).

infer: images, folders (recursively), videos and webcams -> ``results.json`` (every input's people: keypoints
with per-keypoint confidence, instance score, box; video frames with track ids), ``results_coco.json`` (the
images' people as a standard COCO keypoint results list, for ``regpose evaluate`` and other tools), rendered
pictures / mp4s under ``vis/``. Bad inputs get one line each and are counted; the exit status is non-zero only
when nothing could be processed. The results files are rewritten every 30 s and whenever the run stops (Ctrl-C,
SIGTERM, an error), so what was computed is kept.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from .types import finite_float, positive_float, positive_int, size_pair
from ..errors import ConfigError, InputError
from ..paths import OutputError, require_writable_dir, require_writable_file
from ..progress import progress
from ..structures import to_coco_results
from ..threads import set_threads

__all__ = ["INFER_HELP", "EXPORT_HELP", "add_infer_arguments", "run_infer", "add_export_arguments", "run_export",
           "ResultsJson"]

INFER_HELP = "poses in images, folders, videos or a webcam: results json, rendered pictures / mp4"
EXPORT_HELP = "export a model to ONNX (for regpose infer --backend onnx and deployment)"


# ----------------------------------------------------------------------------------------------------------
# infer
# ----------------------------------------------------------------------------------------------------------
def add_infer_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="model config (YAML)")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, folders (searched recursively), video files, or a webcam index (0)")
    p.add_argument("--weights", required=True,
                   help="checkpoint (.pth): ours or an official DEKR / Poseur / QueryPose one (converted in memory), "
                        "or model.onnx with --backend onnx")
    p.add_argument("--out", required=True, help="output folder")
    g = p.add_argument_group("model")
    g.add_argument("--backend", choices=["torch", "onnx"], help="default: onnx for a .onnx file, else torch")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    g.add_argument("--threads", type=positive_int,
                   help="CPU threads of torch and ONNX Runtime (default: the cores of this process; the log says)")
    g.add_argument("--flip", action="store_true", help="flip test")
    g.add_argument("--scales", type=positive_float, nargs="+", help="multi-scale test factors, e.g. 0.5 1 2")
    g.add_argument("--score-threshold", type=finite_float,
                   help="drop people below this instance score (default: the config's test.score_threshold)")
    g.add_argument("--max-people", type=positive_int, help="at most this many people per image")
    g.add_argument("--batch-size", type=positive_int,
                   help="images / video frames per network call (default 1 for images, 4 for video)")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override (repeatable), e.g. --set test.max_people=20")
    g = p.add_argument_group("person boxes (top-down methods: Poseur, RLE, TFPose)")
    g.add_argument("--boxes", metavar="DET.json",
                   help="person detections. An image's boxes are found by its file name: a COCO results list "
                        "[{image_id, bbox, score}] names images by id, so the file name must spell it "
                        "(000000000785.jpg -> 785); a json with 'images' [{id, file_name}] and 'annotations' "
                        "[{image_id, bbox, score}] matches file_name against the end of the image's path. Images "
                        "matching no entry, or the same entry as another input, are reported and skipped. A video "
                        "(alone in its call) is looked up by frame index: image_id 0, 1, ...")
    g.add_argument("--det-score-threshold", type=finite_float, help="drop detections below this score")
    g.add_argument("--detector", help="a one-stage / bottom-up regpose config whose people give the boxes")
    g.add_argument("--detector-weights", help="weights of --detector")
    g = p.add_argument_group("output")
    g.add_argument("--track", action="store_true", help="videos: keep person ids across frames (OKS + Hungarian)")
    g.add_argument("--no-render", action="store_true", help="write the results json only")
    g.add_argument("--no-boxes", action="store_true", help="do not draw person boxes")
    g.add_argument("--no-scores", action="store_true", help="do not draw instance scores")
    g.add_argument("--vis-threshold", type=finite_float, default=0.0, help="draw only people scoring at least this")
    g.add_argument("--kpt-thr", "--kpt-threshold", dest="kpt_threshold", type=finite_float, metavar="T",
                   help="keypoints scoring at least T are drawn solid, the others faded and dashed (default: the "
                        "method's, from what its keypoint scores mean; see regpose.inference.visualize)")
    g.add_argument("--max-frames", type=positive_int, help="stop each video / webcam after this many frames")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


class ResultsJson:
    """Collects every input's people; writes ``results.json`` (keyed by input) and ``results_coco.json``
    atomically, as often as asked: a run that stops early keeps what it computed."""

    def __init__(self, info: dict):
        self.info = info
        self.images: dict[str, dict] = {}
        self.videos: dict[str, dict] = {}
        self.written_at = time.monotonic()

    @staticmethod
    def people(result, image_id: int) -> list[dict]:

        entries = to_coco_results(result, image_id)
        tracks = result.extras.get("track_id")
        if tracks is not None:
            for e, t in zip(entries, np.asarray(tracks).tolist()):
                e["track_id"] = int(t)
        return entries

    def add_image(self, key: str, image_id: int, shape, result) -> None:
        self.images[key] = {"image_id": int(image_id), "height": int(shape[0]), "width": int(shape[1]),
                            "people": self.people(result, image_id)}

    def start_video(self, key: str, fps: float, width: int, height: int) -> dict:
        entry = {"fps": float(fps), "width": int(width), "height": int(height), "num_frames": 0, "frames": []}
        self.videos[key] = entry
        return entry

    def __len__(self) -> int:
        """Inputs with results: images, and videos with at least one frame."""
        return len(self.images) + sum(1 for v in self.videos.values() if v["frames"])

    def write(self, out: Path) -> tuple[Path, Path]:

        videos = {k: dict(v, num_frames=len(v["frames"])) for k, v in self.videos.items() if v["frames"]}
        coco = [{k: v for k, v in p.items() if k != "track_id"} for e in self.images.values() for p in e["people"]]
        paths = []
        for name, data in (("results.json", {"info": self.info, "images": self.images, "videos": videos}),
                           ("results_coco.json", coco)):
            path = out / name
            tmp = path.with_suffix(".json.tmp")
            try:
                out.mkdir(parents=True, exist_ok=True)
                tmp.write_text(json.dumps(data))
                os.replace(tmp, path)
            except OSError as e:
                raise OutputError(f"cannot write {path} ({e.strerror or e})") from None
            paths.append(path)
        self.written_at = time.monotonic()
        return paths[0], paths[1]

    def write_every(self, out: Path, seconds: float) -> None:
        """Rewrite the files when the last write is ``seconds`` old (a killed run loses at most that much)."""
        if len(self) and time.monotonic() - self.written_at >= seconds:
            self.write(out)


def _progress(total, unit: str, desc: str, disable: bool):
    return progress(total=total, unit=unit, desc=desc, disable=disable, mininterval=0.5)


def _save_image(path: Path, rgb: np.ndarray) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise InputError(f"cannot write {path}")


def _vis_path(out: Path, it) -> Path:
    """Where an input's drawing goes: ``vis/<out_name>`` as .mp4 (videos, webcams), .png (PNG inputs) or .jpg."""
    suffix = ".mp4" if it.kind != "image" else ".png" if Path(str(it.source)).suffix.lower() == ".png" else ".jpg"
    return out / "vis" / (it.out_name + suffix)


def _check_drawings_spare_inputs(out: Path, items: list) -> None:
    """Refuse an --out whose drawings would overwrite the inputs themselves (e.g. inputs under <out>/vis/)."""

    inputs = {Path(it.source).resolve(): it.key for it in items if it.kind != "webcam"}
    for it in items:
        target = _vis_path(out, it).resolve()
        if target in inputs:
            raise ConfigError(f"--out {out}: the drawing of {it.key} would overwrite the input {inputs[target]}; "
                              f"choose another --out (or --no-render)")


def _image_ids(images: list, box_source) -> tuple[dict[str, int], list[tuple[int, str]]]:
    """Image ids of the image inputs, distinct within the call, and (input index, message) for inputs skipped.

    Without a detections json the ids only label results (:func:`unique_image_ids`). With one they also pick each
    input's person boxes (:meth:`DetectionBoxes.image_id_for`): an input the rule matches to no image is skipped,
    and so is every input of a group that matches the same image (whose boxes would be given to all of them)."""
    from ..inference.boxes import DetectionBoxes, unique_image_ids  # lazy: CLI start-up time

    if not isinstance(box_source, DetectionBoxes):
        return dict(zip((it.key for it in images), unique_image_ids([it.source for it in images]))), []
    claims: dict[int, list[int]] = {}
    problems = []
    for i, it in enumerate(images):
        try:
            claims.setdefault(box_source.image_id_for(it.source), []).append(i)
        except InputError as e:
            problems.append((i, f"skipped {it.source}: {e}"))
    ids = {}
    for image_id, owners in claims.items():
        if len(owners) == 1:
            ids[images[owners[0]].key] = image_id
            continue
        for i in owners:
            others = ", ".join(str(images[j].source) for j in owners if j != i)
            problems.append((i, f"skipped {images[i].source}: no person boxes: it and {others} all match image id "
                                f"{image_id} of {Path(box_source.path).name}, whose boxes belong to one of them"))
    return ids, sorted(problems)


def _check_video_boxes(box_source, items: list) -> None:
    """A detections json serves a video by frame index (image_id 0, 1, ...): one video, nothing else in the call."""
    from ..inference.boxes import DetectionBoxes  # lazy: CLI start-up time

    if isinstance(box_source, DetectionBoxes) and len(items) > 1 and any(it.kind != "image" for it in items):
        raise ConfigError(f"--boxes {box_source.path}: a video's boxes are looked up by frame index (image_id 0, 1, "
                          f"...), so a detections file serves one video and nothing else: run each video, and the "
                          f"images, in a call of its own")


@contextlib.contextmanager
def _terminate_gracefully():
    """SIGTERM (a scheduler's or ``kill``'s stop) unwinds like Ctrl-C so the results so far are written; exit 143."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _InferRun:
    """One ``regpose infer`` call: inputs -> results (written every ``FLUSH_SECONDS`` and on every way out),
    rendered pictures and videos, counts for the summary line."""

    FLUSH_SECONDS = 30.0

    def __init__(self, predictor, args, out: Path, skipped: int, threads: int):
        from ..inference.boxes import DetectionBoxes  # lazy: CLI start-up time

        cfg = predictor.cfg
        self.predictor, self.args, self.out, self.skipped, self.threads = predictor, args, out, skipped, threads
        # a detections json (--boxes): inputs it has no boxes for are reported
        self.detections = predictor.box_source if isinstance(predictor.box_source, DetectionBoxes) else None
        self.render = not args.no_render
        self.draw = dict(kpt_threshold=args.kpt_threshold, score_threshold=args.vis_threshold,
                         show_boxes=not args.no_boxes, show_scores=not args.no_scores)
        self.without_boxes = 0          # images, and video frames, that the detections json has no boxes for
        self.frames_without_boxes = 0
        self.t0 = time.perf_counter()
        self.results = ResultsJson({
            "method": cfg.method, "config": str(args.config), "weights": str(args.weights),
            "backend": predictor.backend, "keypoint_format": cfg.data.format,
            "keypoint_names": list(predictor.keypoint_meta.keypoint_names),
            "skeleton": [list(l) for l in predictor.keypoint_meta.skeleton], "flip": bool(cfg.test.flip),
            "scales": list(cfg.test.scales), "score_threshold": float(cfg.test.score_threshold),
            "keypoints": "x, y, confidence per keypoint (pixels of the input)", "bbox": "x, y, w, h"})

    def _skip(self, message: str) -> None:
        print(message, file=sys.stderr)
        self.skipped += 1

    # ---- images: ids, read (one line per unreadable file), predict in batches, render
    def images(self, images: list) -> None:
        from ..inference.predictor import load_image  # lazy: CLI start-up time

        if not images:
            return
        ids, problems = _image_ids(images, self.predictor.box_source)
        for _, msg in problems:
            self._skip(msg)
        images = [it for it in images if it.key in ids]
        detections = self.detections
        bs = self.args.batch_size or 1
        bar = _progress(len(images), "img", "images", self.args.no_progress)
        try:
            for chunk in (images[i:i + bs] for i in range(0, len(images), bs)):
                loaded = []
                for it in chunk:
                    try:
                        loaded.append((it, load_image(it.source)))
                    except InputError as e:
                        self._skip(f"skipped {it.source}: {e}")
                        bar.update(1)
                if not loaded:
                    continue
                chunk_ids = [ids[it.key] for it, _ in loaded]
                try:
                    preds = self.predictor.predict_batch([img for _, img in loaded], color="rgb", image_ids=chunk_ids,
                                                         file_names=[it.source for it, _ in loaded])
                except InputError as e:
                    for it, _ in loaded:
                        self._skip(f"skipped {it.source}: {e}")
                    bar.update(len(loaded))
                    continue
                for (it, img), iid, res in zip(loaded, chunk_ids, preds):
                    if detections is not None and not len(detections(iid)):
                        print(f"no person boxes for {it.source}: {Path(detections.path).name} has none for image "
                              f"id {iid}", file=sys.stderr)
                        self.without_boxes += 1
                    self.results.add_image(it.key, iid, img.shape, res)
                    if self.render:
                        _save_image(_vis_path(self.out, it), self.predictor.render(img, res, color="rgb", **self.draw))
                    bar.update(1)
                self.results.write_every(self.out, self.FLUSH_SECONDS)
        finally:
            bar.close()

    # ---- a video or webcam: frames in order, batched, optionally tracked; mp4 with the input's fps and size
    def video(self, it) -> None:
        from ..inference.video import VideoReader, VideoWriter  # lazy: CLI start-up time

        args = self.args
        try:
            reader = VideoReader(it.source)
        except InputError as e:
            self._skip(f"skipped {it.key}: {e}")
            return
        entry = self.results.start_video(it.key, reader.fps, reader.width, reader.height)
        video_path = _vis_path(self.out, it)
        writer = VideoWriter(video_path, reader.fps, (reader.width, reader.height) if reader.width else None) \
            if self.render else None
        tracker = self.predictor.tracker() if args.track else None
        frames = iter(reader) if args.max_frames is None else itertools.islice(reader, args.max_frames)
        total = reader.frame_count if args.max_frames is None else min(reader.frame_count or args.max_frames,
                                                                         args.max_frames)
        bar = _progress(total, "frame", Path(str(it.key)).name, args.no_progress)
        failure = "no frames could be decoded (empty or corrupt video)"
        unboxed = 0
        try:
            for index, frame, res in self.predictor.predict_frames(frames, args.batch_size or 4, tracker):
                entry["frames"].append({"frame": index, "people": self.results.people(res, index)})
                if self.detections is not None and not len(self.detections(index)):
                    unboxed += 1
                    if unboxed == 1:    # once per video: a json for other frames (or images) would repeat it per frame
                        print(f"{it.key}: {Path(self.detections.path).name} has no person boxes for frame {index} (a "
                              f"video's frames are image_id 0, 1, ...): frames without boxes get no people",
                              file=sys.stderr)
                if writer is not None:
                    writer.write(self.predictor.render(frame, res, color="rgb", **self.draw))
                bar.update(1)
                self.results.write_every(self.out, self.FLUSH_SECONDS)
        except KeyboardInterrupt:
            if it.kind != "webcam":      # Ctrl-C ends a webcam normally; anything else stops the whole call
                raise
        except InputError as e:          # e.g. frames of a size a static ONNX export cannot take
            failure = str(e)
            if entry["frames"]:          # the frames before it stay in the results
                print(f"{it.key}: stopped after frame {entry['frames'][-1]['frame']}: {failure}", file=sys.stderr)
        finally:
            bar.close()
            reader.close()
            if writer is not None:
                writer.close()
        entry["num_frames"] = len(entry["frames"])
        self.frames_without_boxes += unboxed
        if not entry["frames"]:
            self._skip(f"skipped {it.key}: {failure}")
            del self.results.videos[it.key]
            if video_path.exists():
                video_path.unlink()

    def finish(self, complete: bool) -> bool:
        """Write what was computed (whatever stopped the run) and print the summary; True if anything was."""
        res = self.results
        done = len(res) > 0
        if done:
            paths = res.write(self.out)
        n_images = len(res.images)
        videos = [v for v in res.videos.values() if v["frames"]]
        n_frames = sum(len(v["frames"]) for v in videos)
        elapsed = time.perf_counter() - self.t0
        parts = []
        if n_images:
            parts.append(f"{n_images} image{'s' * (n_images != 1)}"
                         + (f" ({self.without_boxes} without person boxes)" if self.without_boxes else ""))
        if videos:
            parts.append(f"{len(videos)} video{'s' * (len(videos) != 1)} ({n_frames} frames"
                         + (f", {self.frames_without_boxes} without person boxes)" if self.frames_without_boxes
                            else ")"))
        rate = (n_images + n_frames) / elapsed if elapsed > 0 else 0.0
        summary = f"{'' if complete else 'stopped early: '}processed {', '.join(parts) or 'nothing'}; " \
                  f"skipped {self.skipped}"
        if done:
            summary += f" ({rate:.1f} frames/s on {self.threads} threads); results: {paths[0]}, {paths[1]}"
            if self.render:
                summary += f"; pictures: {self.out / 'vis'}"
        print(summary)
        return done


def run_infer(args) -> int:
    from ..inference.predictor import Predictor  # lazy: CLI start-up time
    from ..inference.video import discover_inputs  # lazy: CLI start-up time

    out = require_writable_dir(args.out, "--out")
    threads = set_threads(args.threads, announce=False)   # no data workers: every core; the summary line says it
    predictor = Predictor(args.config, args.weights, device=args.device, backend=args.backend, overrides=args.set,
                          flip=True if args.flip else None, scales=args.scales, score_threshold=args.score_threshold,
                          max_people=args.max_people, boxes=args.boxes, detector=args.detector,
                          detector_weights=args.detector_weights, det_score_threshold=args.det_score_threshold,
                          threads=threads)
    predictor.require_boxes()
    items, problems = discover_inputs(args.inputs)
    _check_video_boxes(predictor.box_source, items)
    if not args.no_render:
        _check_drawings_spare_inputs(out, items)
    run = _InferRun(predictor, args, out, skipped=len(problems), threads=threads)
    for msg in problems:
        print(msg, file=sys.stderr)
    try:
        with _terminate_gracefully():
            run.images([it for it in items if it.kind == "image"])
            for it in items:
                if it.kind != "image":
                    run.video(it)
    except BaseException:
        run.finish(complete=False)     # Ctrl-C, SIGTERM, a failing write or an unexpected error: keep the results
        raise
    return 0 if run.finish(complete=True) else 1


# ----------------------------------------------------------------------------------------------------------
# export
# ----------------------------------------------------------------------------------------------------------
def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="model config (YAML)")
    p.add_argument("--weights", required=True, help="checkpoint (.pth): ours or an official one (converted in memory)")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--dynamic", action="store_true",
                   help="dynamic batch (and, for whole-image methods, height / width): needed for flip test, "
                        "multi-scale and images of varying size")
    p.add_argument("--input-size", type=size_pair, metavar="HxW", help="network input of the example, height first (default: what the test "
                   "transform makes of a 480x640 image; top-down: the crop size)")
    p.add_argument("--batch-size", type=positive_int, default=1, help="batch of the example (the static batch)")
    p.add_argument("--opset", type=_opset, default=17,
                   help="ONNX opset (default 17; the attention and sampling ops of the transformers need >= 16)")
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")


def _opset(text: str) -> int:
    """An opset the PyTorch exporter writes (TorchScript exporter range)."""
    from torch.onnx import _constants

    v = positive_int(text)
    low, high = _constants.ONNX_MIN_OPSET, _constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET
    if not low <= v <= high:
        raise argparse.ArgumentTypeError(f"expected an opset from {low} to {high}, got {v}")
    return v


def run_export(args) -> int:
    from ..config import load_config  # lazy: CLI start-up time
    from ..checkpoint import load_model_weights  # lazy: CLI start-up time
    from ..models import build_model  # lazy: CLI start-up time
    from ..inference.export import export_onnx  # lazy: CLI start-up time

    require_writable_file(args.out, "--out")
    cfg = load_config(args.config, args.set)
    model = build_model(cfg)
    load_model_weights(model, args.weights)
    result = export_onnx(model, cfg, args.out, dynamic=args.dynamic, input_hw=args.input_size,
                         batch_size=args.batch_size, opset=args.opset, verify=not args.no_verify)
    print(result.summary())
    return 0
