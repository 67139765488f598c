"""``regpose demo`` / ``make demo``: the whole loop on the built-in synthetic crowds, in a few CPU minutes.

generate synthetic train/val splits -> train the method's synthetic config under a wall-clock budget ->
evaluate on the validation split -> render predictions on validation images -> print the metrics table.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

from .data.keypoints import keypoint_layout
from .engine.logging import get_logger
from .errors import RegposeError
from .threads import available_cores, set_threads

__all__ = ["SYNTHETIC_CONFIGS", "DEFAULT_METHOD", "DEFAULT_MINUTES", "READABLE_ITERS", "run_demo", "configs_dir",
           "people_source", "demo_threads"]

#: the small config of each method that learns on a CPU from the synthetic data
SYNTHETIC_CONFIGS = {
    "querypose": "querypose/querypose_r18_synthetic.yaml",
    "dekr": "dekr/dekr_hrnet_tiny_synthetic.yaml",
    "poseur": "poseur/poseur_tiny_synthetic.yaml",
    "rle": "rle/rle_tiny_synthetic.yaml",
    "tfpose": "tfpose/tfpose_tiny_synthetic.yaml",
    "directpose": "directpose/directpose_r18_synthetic.yaml",
}
# Poseur (ground-truth person boxes, as the demo says when it runs) shows recognisable skeletons after a few CPU
# minutes; QueryPose's sparse set prediction needs far longer from scratch (bench/bench_querypose_learning.py).
DEFAULT_METHOD = "poseur"
# 8 minutes hold about 1,400 iterations of poseur_tiny_synthetic on a quiet 2-core machine (0.31 s each: one compute
# thread beside the data-loader worker), about 10 minutes for the whole demo with data generation and evaluation.
DEFAULT_MINUTES = 8.0
#: iterations of the default method's synthetic config from which the pictures show skeletons on people. Measured
#: with the schedule fitted to each count (validation AP; pictures of the first 8 validation images): 495 -> 0.009,
#: one mean pose drawn faded on everybody; 890 -> 0.055, solid skeletons on some people; 2,723 -> 0.271, on most.
READABLE_ITERS = 900


def configs_dir() -> Path:
    """The repository's ``configs/`` folder (next to the package in a source checkout)."""
    here = Path(__file__).resolve().parent.parent / "configs"
    if not here.is_dir():
        raise RegposeError(f"configs folder not found at {here}: run the demo from a source checkout of regpose")
    return here


#: how the demo finds the people it renders and evaluates, by method family
_PEOPLE_SOURCE = {
    "topdown": "top-down: given the ground-truth person boxes, as in its evaluation",
    "bottomup": "bottom-up: people found at the peaks of the predicted centre heatmap, no boxes given",
    "onestage": "one-stage: the network finds the people itself, no boxes given",
}


def demo_threads() -> int:
    """Compute threads for the demo's training: every core this process may use. The demo's data worker renders
    small synthetic crops and mostly waits, so it does not need a core of its own: on a quiet 2-core machine a
    poseur_tiny_synthetic step took 0.355 s on 2 threads against 0.51 s on 1 (interleaved, same process), i.e.
    about 1,250 instead of 860 iterations in the default 8 minutes. (On a machine busy with other jobs 2 threads
    can be far slower than 1, measured 11x: then pass ``--threads 1``; the demo warns when few iterations fit.)
    An explicit ``OMP_NUM_THREADS`` still wins, as for every command."""
    return available_cores()


def people_source(cfg) -> str:
    """How the demo's method finds the people it evaluates and renders (by its family), for the log."""
    from .models.registry import get_method  # lazy: `regpose demo --help` reads this module's constants without loading torch

    return _PEOPLE_SOURCE[get_method(cfg.method).family]


def run_demo(method: str = DEFAULT_METHOD, minutes: float = DEFAULT_MINUTES, out: str | Path = "runs/demo",
             num_render: int = 8, overrides: list[str] | None = None, kpt_threshold: float | None = None,
             threads: int | None = None) -> int:
    """The demo; ``kpt_threshold``: keypoints drawn solid from this confidence (default: the method's); ``threads``:
    torch threads (default: every core, :func:`demo_threads`)."""
    import cv2
    import numpy as np

    from .config import load_config  # lazy: `regpose demo --help` reads this module's constants without loading torch
    from .data.datasets import ensure_synthetic, load_records, read_image  # lazy: `regpose demo --help` reads this module's constants without loading torch
    from .engine.budget import fit_schedule_to_budget, seconds_per_iteration  # lazy: `regpose demo --help` reads this module's constants without loading torch
    from .engine.trainer import train  # lazy: `regpose demo --help` reads this module's constants without loading torch
    from .evaluation import format_metrics  # lazy: `regpose demo --help` reads this module's constants without loading torch
    from .inference.predictor import Predictor  # lazy: `regpose demo --help` reads this module's constants without loading torch

    if method not in SYNTHETIC_CONFIGS:
        raise RegposeError(f"--method: unknown method '{method}' (one of: {', '.join(SYNTHETIC_CONFIGS)})")
    log = get_logger()
    out = Path(out) / method
    cfg = load_config(configs_dir() / SYNTHETIC_CONFIGS[method],
                      [f"output_dir={out}", *(overrides or [])])
    t0 = time.time()
    log.info("[1/4] synthetic data (%s format): %s, %s", cfg.data.format, cfg.data.train.root, cfg.data.val.root)
    for split in (cfg.data.train, cfg.data.val):
        ensure_synthetic(split, cfg.data.format, keypoint_layout(cfg.data))
    if not threads and not os.environ.get("OMP_NUM_THREADS", "").isdigit():
        threads = demo_threads()
    threads = set_threads(threads, cfg.train.num_workers)   # before the timing that sizes the schedule to the budget
    # the schedule (warm-up, decay, EMA) is fitted to the budget, so the model is finished when time is up
    sec = seconds_per_iteration(cfg)
    iters = fit_schedule_to_budget(cfg, minutes, sec)
    log.info("[2/4] training %s for %d iterations (%.2f s each here on %d compute thread(s) + %d data worker(s), "
             "at most %.1f minutes) -> %s", cfg.name, iters, sec, threads, cfg.train.num_workers, minutes, out)
    if method == DEFAULT_METHOD and iters < READABLE_ITERS:
        log.warning("this machine fits only %d iterations in %.1f minutes: the pictures show solid skeletons from "
                    "about %d (--minutes %d here); other jobs running make every iteration slower", iters, minutes,
                    READABLE_ITERS, math.ceil(minutes * READABLE_ITERS / iters))
    metrics = train(cfg, overwrite=True)   # the demo's folder is its own: running the demo again starts over
    log.info("[3/4] rendering predictions on %d validation images (%s)", num_render, people_source(cfg))
    predictor = Predictor(cfg, out / "model_final.pth", device="cpu")
    render_dir = out / "predictions"
    render_dir.mkdir(parents=True, exist_ok=True)
    records = load_records(cfg.data.val, cfg.data.format, keypoints=keypoint_layout(cfg.data))[:num_render]
    for rec in records:
        image = read_image(rec.file_name)
        boxes = None
        if predictor.family == "topdown":  # the demo gives top-down methods the ground-truth person boxes
            labelled = rec.num_keypoints > 0
            boxes = np.concatenate([rec.boxes[labelled], np.ones((int(labelled.sum()), 1), np.float32)], 1)
        result = predictor(image, color="rgb", boxes=boxes, box_format="xywh", image_id=rec.image_id)
        canvas = predictor.render(image, result, color="rgb", kpt_threshold=kpt_threshold)
        cv2.imwrite(str(render_dir / (Path(rec.file_name).stem + ".jpg")), canvas[..., ::-1])
    log.info("[4/4] done in %.1f min; predictions rendered to %s", (time.time() - t0) / 60, render_dir)
    if metrics:
        print(f"\n{method} on the synthetic validation split ({cfg.data.val.root}):")
        print(format_metrics(metrics, cfg.data.format))
    print(f"\nrun folder: {out}  (config.yaml, metrics.jsonl, model_final.pth, results_val.json, predictions/)")
    return 0
