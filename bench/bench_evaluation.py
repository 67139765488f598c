"""Speed of regpose.evaluation against pycocotools / xtcocotools (and faster-coco-eval) on a large random scene.

Default: 5,000 images with ~10 predictions each (~7 people per image, duplicates, misses, false positives).
Every engine reads the same ground-truth and results files from disk, so JSON parsing is included in all
timings; the statistics must agree to 1e-6. The engines run in interleaved rounds; both wall-clock and process CPU
time (best of ``--repeat``) are reported (on a shared machine compare CPU times). Run:

    .venv/bin/python -m bench.bench_evaluation [--images 5000] [--dataset coco|crowdpose] [--repeat 1]
"""
from __future__ import annotations

import contextlib
import gc
import io
import json
import tempfile
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from xtcocotools.coco import COCO as XtCOCO
from xtcocotools.cocoeval import COCOeval as XtCOCOeval

from bench._common import cpu_model, interleaved, parser
from regpose.data.keypoints import CROWDPOSE_SIGMAS
from regpose.evaluation import evaluate
from regpose.evaluation.coco import COCO_KEYS, CROWDPOSE_KEYS
from bench.scenes import random_scene


def run_pycocotools(gt_path, res_path):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        dt = gt.loadRes(str(res_path))
        e = COCOeval(gt, dt, "keypoints")
        e.evaluate(); e.accumulate(); e.summarize()
    return list(e.stats)


def run_xtcocotools(gt_path, res_path):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = XtCOCO(str(gt_path))
        dt = gt.loadRes(str(res_path))
        e = XtCOCOeval(gt, dt, "keypoints_crowd", CROWDPOSE_SIGMAS, use_area=False)
        e.evaluate(); e.accumulate(); e.summarize()
    return list(e.stats)


def run_faster(gt_path, res_path, dataset):
    from faster_coco_eval import COCO as FasterCOCO, COCOeval_faster      # optional: --no-faster skips it

    with contextlib.redirect_stdout(io.StringIO()):
        gt = FasterCOCO(str(gt_path))
        dt = gt.loadRes(str(res_path))
        if dataset == "crowdpose":
            e = COCOeval_faster(gt, dt, "keypoints_crowd", kpt_oks_sigmas=CROWDPOSE_SIGMAS, use_area=False,
                                print_function=lambda *a: None)
        else:
            e = COCOeval_faster(gt, dt, "keypoints", print_function=lambda *a: None)
        e.evaluate(); e.accumulate(); e.summarize()
    return list(e.stats)


def main():
    ap = parser(__doc__)
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--dataset", choices=["coco", "crowdpose"], default="coco")
    ap.add_argument("--repeat", type=int, default=1, help="timed runs per engine (best is reported)")
    ap.add_argument("--no-faster", action="store_true", help="skip faster-coco-eval")
    args = ap.parse_args()

    crowd = args.dataset == "crowdpose"
    gt, res = random_scene(args.images, 14 if crowd else 17, seed=0, people=7.0, preds_per_person=1.2,
                           false_positives=2.0, crowdpose=crowd, with_bbox=False)
    tmp = Path(tempfile.mkdtemp())
    gt_path, res_path = tmp / "gt.json", tmp / "res.json"
    gt_path.write_text(json.dumps(gt))
    res_path.write_text(json.dumps(res))
    print(f"{cpu_model()}: {args.images} images, {len(gt['annotations'])} GT people, {len(res)} predictions "
          f"({len(res) / args.images:.1f} per image), dataset {args.dataset}")
    del gt, res
    gc.collect()

    keys = CROWDPOSE_KEYS if crowd else COCO_KEYS
    def ours():
        m = evaluate(gt_path, res_path, args.dataset)
        return [m[k] for k in keys]

    engines = {"regpose": ours,
               ("xtcocotools" if crowd else "pycocotools"):
                   (lambda: run_xtcocotools(gt_path, res_path)) if crowd else (lambda: run_pycocotools(gt_path, res_path))}
    if not args.no_faster:
        engines["faster-coco-eval"] = lambda: run_faster(gt_path, res_path, args.dataset)
    stats = {}
    timing = interleaved({name: (lambda name=name, fn=fn: stats.__setitem__(name, fn()))
                          for name, fn in engines.items()}, runs=args.repeat, warmup=0)
    times = {name: t["min_ms"] / 1000 for name, t in timing.items()}
    cpu = {name: t["cpu_min_ms"] / 1000 for name, t in timing.items()}
    ref_name = "xtcocotools" if crowd else "pycocotools"
    ref = np.asarray(stats[ref_name], dtype=np.float64)
    print(f"{'engine':18s} {'wall (s)':>9s} {'cpu (s)':>8s} {'cpu speed-up':>13s} {'max |diff|':>11s}")
    for name in engines:
        diff = float(np.max(np.abs(np.asarray(stats[name], dtype=np.float64)[:len(ref)] - ref)))
        print(f"{name:18s} {times[name]:9.2f} {cpu[name]:8.2f} {cpu[ref_name] / cpu[name]:12.1f}x {diff:11.1e}")
    print("stats (regpose):", {k: round(v, 4) for k, v in zip(keys, stats["regpose"])})


if __name__ == "__main__":
    main()
