"""``regpose infer`` and ``regpose export`` (wired into :mod:`regpose.cli`).

infer: images, folders (recursively), videos and webcams -> ``results.json`` (every input's people: keypoints
with per-keypoint confidence, instance score, box; video frames with track ids), ``results_coco.json`` (the
images' people as a standard COCO keypoint results list, for ``regpose evaluate`` and other tools), rendered
pictures / mp4s under ``vis/``. Bad inputs get one line each and are counted; the exit status is non-zero only
when nothing could be processed.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import InputError

__all__ = ["INFER_HELP", "EXPORT_HELP", "add_infer_arguments", "run_infer", "add_export_arguments", "run_export",
           "ResultsJson"]

INFER_HELP = "poses in images, folders, videos or a webcam: results json, rendered pictures / mp4"
EXPORT_HELP = "export a model to ONNX (for regpose infer --backend onnx and deployment)"


def _hw(text: str) -> tuple[int, int]:
    try:
        a, b = text.lower().split("x")
        return int(a), int(b)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW (e.g. 512x704), got {text!r}") from None


# ----------------------------------------------------------------------------------------------------------
# infer
# ----------------------------------------------------------------------------------------------------------
def add_infer_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="model config (YAML)")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, folders (searched recursively), video files, or a webcam index (0)")
    p.add_argument("--weights", required=True, help="checkpoint (.pth), or model.onnx with --backend onnx")
    p.add_argument("--out", required=True, help="output folder")
    g = p.add_argument_group("model")
    g.add_argument("--backend", choices=["torch", "onnx"], help="default: onnx for a .onnx file, else torch")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    g.add_argument("--threads", type=int, help="CPU threads (torch and ONNX Runtime)")
    g.add_argument("--flip", action="store_true", help="flip test")
    g.add_argument("--scales", type=float, nargs="+", help="multi-scale test factors, e.g. 0.5 1 2")
    g.add_argument("--score-threshold", type=float,
                   help="drop people below this instance score (default: the config's test.score_threshold)")
    g.add_argument("--max-people", type=int, help="at most this many people per image")
    g.add_argument("--batch-size", type=int,
                   help="images / video frames per network call (default 1 for images, 4 for video)")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override (repeatable), e.g. --set test.max_people=20")
    g = p.add_argument_group("person boxes (top-down methods: Poseur, RLE, TFPose)")
    g.add_argument("--boxes", help="COCO-results json of person detections (image ids from COCO file names)")
    g.add_argument("--det-score-threshold", type=float, help="drop detections below this score")
    g.add_argument("--detector", help="a one-stage / bottom-up regpose config whose people give the boxes")
    g.add_argument("--detector-weights", help="weights of --detector")
    g = p.add_argument_group("output")
    g.add_argument("--track", action="store_true", help="videos: keep person ids across frames (OKS + Hungarian)")
    g.add_argument("--no-render", action="store_true", help="write the results json only")
    g.add_argument("--no-boxes", action="store_true", help="do not draw person boxes")
    g.add_argument("--no-scores", action="store_true", help="do not draw instance scores")
    g.add_argument("--vis-threshold", type=float, default=0.0, help="draw only people scoring at least this")
    g.add_argument("--kpt-threshold", type=float, default=0.05, help="hide keypoints below this confidence")
    g.add_argument("--max-frames", type=int, help="stop each video / webcam after this many frames")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


class ResultsJson:
    """Collects every input's people; writes ``results.json`` (keyed by input) and ``results_coco.json``."""

    def __init__(self, info: dict):
        self.info = info
        self.images: dict[str, dict] = {}
        self.videos: dict[str, dict] = {}
        self.coco: list[dict] = []

    @staticmethod
    def people(result, image_id: int) -> list[dict]:
        from ..structures import to_coco_results

        entries = to_coco_results(result, image_id)
        tracks = result.extras.get("track_id")
        if tracks is not None:
            for e, t in zip(entries, np.asarray(tracks).tolist()):
                e["track_id"] = int(t)
        return entries

    def add_image(self, key: str, image_id: int, shape, result) -> None:
        people = self.people(result, image_id)
        self.images[key] = {"image_id": int(image_id), "height": int(shape[0]), "width": int(shape[1]),
                            "people": people}
        self.coco.extend({k: v for k, v in p.items() if k != "track_id"} for p in people)

    def start_video(self, key: str, fps: float, width: int, height: int) -> dict:
        entry = {"fps": float(fps), "width": int(width), "height": int(height), "num_frames": 0, "frames": []}
        self.videos[key] = entry
        return entry

    def write(self, out: Path) -> tuple[Path, Path]:
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, data in (("results.json", {"info": self.info, "images": self.images, "videos": self.videos}),
                           ("results_coco.json", self.coco)):
            path = out / name
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(data))
            os.replace(tmp, path)
            paths.append(path)
        return paths[0], paths[1]


def _progress(total, unit: str, desc: str, disable: bool):
    from tqdm import tqdm
    return tqdm(total=total, unit=unit, desc=desc, disable=disable, dynamic_ncols=True, file=sys.stderr,
                mininterval=0.5)


def _save_image(path: Path, rgb: np.ndarray) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise InputError(f"cannot write {path}")


def run_infer(args) -> int:
    from .predictor import Predictor, load_image
    from .topdown import image_id_from_name
    from .video import VideoReader, VideoWriter, discover_inputs

    out = Path(args.out)
    predictor = Predictor(args.config, args.weights, device=args.device, backend=args.backend, overrides=args.set,
                          flip=True if args.flip else None, scales=args.scales, score_threshold=args.score_threshold,
                          max_people=args.max_people, boxes=args.boxes, detector=args.detector,
                          detector_weights=args.detector_weights, det_score_threshold=args.det_score_threshold,
                          threads=args.threads)
    predictor.require_boxes()
    items, problems = discover_inputs(args.inputs)
    for msg in problems:
        print(msg, file=sys.stderr)
    skipped = len(problems)
    cfg = predictor.cfg
    results = ResultsJson({
        "method": cfg.method, "config": str(args.config), "weights": str(args.weights), "backend": predictor.backend,
        "keypoint_format": cfg.data.format, "keypoint_names": list(predictor.keypoint_meta.keypoint_names),
        "skeleton": [list(l) for l in predictor.keypoint_meta.skeleton], "flip": bool(cfg.test.flip),
        "scales": list(cfg.test.scales), "score_threshold": float(cfg.test.score_threshold),
        "keypoints": "x, y, confidence per keypoint (pixels of the input)", "bbox": "x, y, w, h"})
    draw = dict(kpt_threshold=args.kpt_threshold, score_threshold=args.vis_threshold,
                show_boxes=not args.no_boxes, show_scores=not args.no_scores)
    render = not args.no_render
    n_images = n_videos = n_frames = 0
    t0 = time.perf_counter()

    # ---- images: read (one line per unreadable file), predict in batches, render
    images = [it for it in items if it.kind == "image"]
    if images:
        bs = max(1, args.batch_size or 1)
        bar = _progress(len(images), "img", "images", args.no_progress)
        for chunk in (images[i:i + bs] for i in range(0, len(images), bs)):
            loaded = []
            for it in chunk:
                try:
                    loaded.append((it, load_image(it.source)))
                except InputError as e:
                    print(f"skipped {it.source}: {e}", file=sys.stderr)
                    skipped += 1
                    bar.update(1)
            if not loaded:
                continue
            ids = [image_id_from_name(it.source, n_images + j) for j, (it, _) in enumerate(loaded)]
            try:
                preds = predictor.predict_batch([img for _, img in loaded], image_ids=ids,
                                                file_names=[it.source for it, _ in loaded])
            except InputError as e:
                for it, _ in loaded:
                    print(f"skipped {it.source}: {e}", file=sys.stderr)
                skipped += len(loaded)
                bar.update(len(loaded))
                continue
            for (it, img), iid, res in zip(loaded, ids, preds):
                results.add_image(it.key, iid, img.shape, res)
                if render:
                    ext = ".png" if Path(str(it.source)).suffix.lower() == ".png" else ".jpg"
                    _save_image(out / "vis" / (it.out_name + ext), predictor.render(img, res, **draw))
                n_images += 1
                bar.update(1)
        bar.close()

    # ---- videos and webcams: frames in order, batched, optionally tracked; mp4 with the input's fps and size
    for it in (i for i in items if i.kind != "image"):
        try:
            reader = VideoReader(it.source)
        except InputError as e:
            print(f"skipped {it.key}: {e}", file=sys.stderr)
            skipped += 1
            continue
        entry = results.start_video(it.key, reader.fps, reader.width, reader.height)
        video_path = out / "vis" / (it.out_name + ".mp4")
        writer = VideoWriter(video_path, reader.fps, (reader.width, reader.height) if reader.width else None) \
            if render else None
        tracker = predictor.tracker() if args.track else None
        frames = iter(reader) if args.max_frames is None else itertools.islice(reader, args.max_frames)
        total = reader.frame_count if args.max_frames is None else min(reader.frame_count or args.max_frames,
                                                                         args.max_frames)
        bar = _progress(total, "frame", Path(str(it.key)).name, args.no_progress)
        failure = "no frames could be decoded (empty or corrupt video)"
        try:
            for index, frame, res in predictor.predict_frames(frames, args.batch_size or 4, tracker):
                entry["frames"].append({"frame": index, "people": results.people(res, index)})
                if writer is not None:
                    writer.write(predictor.render(frame, res, **draw))
                bar.update(1)
        except KeyboardInterrupt:
            if it.kind != "webcam":
                raise
        except InputError as e:          # e.g. frames of a size a static ONNX export cannot take
            entry["frames"].clear()
            failure = str(e)
        finally:
            bar.close()
            reader.close()
            if writer is not None:
                writer.close()
        entry["num_frames"] = len(entry["frames"])
        if not entry["frames"]:
            print(f"skipped {it.key}: {failure}", file=sys.stderr)
            del results.videos[it.key]
            if video_path.exists():
                video_path.unlink()
            skipped += 1
            continue
        n_videos += 1
        n_frames += entry["num_frames"]

    done = n_images + n_videos
    if done:
        res_path, coco_path = results.write(out)
    elapsed = time.perf_counter() - t0
    parts = []
    if n_images:
        parts.append(f"{n_images} image{'s' * (n_images != 1)}")
    if n_videos:
        parts.append(f"{n_videos} video{'s' * (n_videos != 1)} ({n_frames} frames)")
    rate = (n_images + n_frames) / elapsed if elapsed > 0 else 0.0
    summary = f"processed {', '.join(parts) or 'nothing'}; skipped {skipped}"
    if done:
        summary += f" ({rate:.1f} frames/s); results: {res_path}, {coco_path}"
        if render:
            summary += f"; pictures: {out / 'vis'}"
    print(summary)
    return 0 if done else 1


# ----------------------------------------------------------------------------------------------------------
# export
# ----------------------------------------------------------------------------------------------------------
def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="model config (YAML)")
    p.add_argument("--weights", required=True, help="checkpoint (.pth): ours or a converted official one")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--dynamic", action="store_true",
                   help="dynamic batch (and, for whole-image methods, height / width): needed for flip test, "
                        "multi-scale and images of varying size")
    p.add_argument("--input-size", type=_hw, help="network input HxW of the example (default: what the test "
                   "transform makes of a 480x640 image; top-down: the crop size)")
    p.add_argument("--batch-size", type=int, default=1, help="batch of the example (the static batch)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")


def run_export(args) -> int:
    from ..config import load_config
    from ..engine.checkpoint import load_model_weights
    from ..models import build_model
    from .export import export_onnx

    cfg = load_config(args.config, args.set)
    model = build_model(cfg)
    load_model_weights(model, args.weights)
    result = export_onnx(model, cfg, args.out, dynamic=args.dynamic, input_hw=args.input_size,
                         batch_size=args.batch_size, opset=args.opset, verify=not args.no_verify)
    print(result.summary())
    return 0
