"""The ``regpose`` command. Each sub-command is a thin layer over a library function; user errors are printed as
one line (``error: ...``) with a non-zero exit status and no traceback."""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from . import inference
from .types import finite_float, positive_float, positive_int, size_pair
from ..errors import RegposeError
from ..paths import require_writable_dir, require_writable_file

EXAMPLES = """examples:
  regpose synth data/synth/train --num-images 2000 --seed 0
  regpose train configs/querypose/querypose_r18_synthetic.yaml train.iters=2000
  torchrun --nproc_per_node=8 -m regpose train configs/querypose/querypose_r50_coco.yaml
  regpose test configs/dekr/dekr_hrnet_w32_coco_512.yaml --weights runs/dekr/model_final.pth --flip
  regpose infer CONFIG --weights W.pth photos/ video.mp4 --out out/
  regpose evaluate --gt person_keypoints_val2017.json --results results.json --dataset coco
  regpose bench configs/dekr/dekr_hrnet_w32_coco_512.yaml --threads 2
  regpose recipe configs/poseur/poseur_r50_coco_256x192.yaml --world-size 8
"""


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other error of the command line."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see '{self.prog} --help')\n")


def _main_process() -> bool:
    """Rank 0 of a torchrun launch (or a plain run): the process that writes the outputs."""
    import os
    return os.environ.get("RANK", "0") == "0"


def _load_cfg(args, overrides: list[str] | None = None):
    from ..config import load_config  # lazy: CLI start-up time

    cfg = load_config(args.config, overrides or getattr(args, "overrides", None) or [])
    if getattr(args, "output_dir", None):
        cfg.output_dir = args.output_dir
    return cfg


# --------------------------------------------------------------------------------------------------------------
def cmd_synth(args) -> int:
    from ..data.synthetic import generate  # lazy: CLI start-up time

    require_writable_dir(args.out, "out")
    w, h = args.size
    path = generate(args.out, args.num_images, seed=args.seed, fmt=args.format, size=(w, h),
                    max_people=args.max_people, progress=True)
    print(f"wrote {path}")
    return 0


def cmd_evaluate(args) -> int:
    from ..evaluation import evaluate, format_metrics  # lazy: CLI start-up time

    if args.json_out:
        require_writable_file(args.json_out, "--json-out")
    metrics = evaluate(args.gt, args.results, dataset=args.dataset)
    print(format_metrics(metrics, args.dataset))
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(metrics, indent=1))
    return 0


def cmd_analyze(args) -> int:
    from ..evaluation.analysis import analyse_keypoint_errors, format_analysis  # lazy: CLI start-up time

    if args.json_out:
        require_writable_file(args.json_out, "--json-out")
    report = analyse_keypoint_errors(args.gt, args.results, dataset=args.dataset)
    print(format_analysis(report))
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(report, indent=1))
    return 0


def cmd_show_data(args) -> int:
    from .show_data import show_data  # lazy: CLI start-up time
    from ..engine.logging import get_logger  # lazy: CLI start-up time

    get_logger()                 # the data layer's notes (e.g. a synthetic split generated first) reach the console
    cfg = _load_cfg(args)
    require_writable_dir(args.out, "--out")
    paths = show_data(cfg, args.out, num_samples=args.num, split=args.split, seed=args.seed)
    print(f"wrote {len(paths)} images to {args.out}")
    return 0


def cmd_train(args) -> int:
    from ..engine.trainer import train  # lazy: CLI start-up time
    from ..evaluation import format_metrics  # lazy: CLI start-up time

    cfg = _load_cfg(args)
    if _main_process():
        require_writable_dir(cfg.output_dir, "--output-dir" if args.output_dir else "output_dir")
    metrics = train(cfg, resume=args.resume, device=args.device, overwrite=args.overwrite)
    if metrics:
        print(format_metrics(metrics, cfg.data.format))
    return 0


def cmd_test(args) -> int:
    from ..engine import dist  # lazy: CLI start-up time
    from ..checkpoint import load_model_weights  # lazy: CLI start-up time
    from ..engine.evaluator import evaluate_model  # lazy: CLI start-up time
    from ..evaluation import format_metrics  # lazy: CLI start-up time
    from ..models import build_model  # lazy: CLI start-up time

    cfg = _load_cfg(args)
    if args.flip:
        cfg.test.flip = True
    if args.scales:
        cfg.test.scales = list(args.scales)
    if args.strict:
        cfg.test.strict = True
    out = args.output_dir or str(Path(cfg.output_dir) / "test")
    if _main_process():
        require_writable_dir(out, "--output-dir" if args.output_dir else "output_dir")
    device = dist.init_distributed(args.device)
    model = build_model(cfg)
    load_model_weights(model, args.weights)
    model.to(device)
    metrics, res = evaluate_model(cfg, model, device, split=args.split, out_dir=out)
    if dist.is_main_process():
        if metrics:
            print(format_metrics(metrics, cfg.data.format))
            (Path(out) / f"metrics_{args.split}.json").write_text(json.dumps(metrics, indent=1))
        print(f"results: {res}")
    dist.cleanup()
    return 0


def cmd_bench(args) -> int:
    from ..engine.bench import format_bench, run_bench, save_bench  # lazy: CLI start-up time

    cfg = _load_cfg(args)
    out = args.json_out or str(Path(cfg.output_dir) / "bench.json")
    require_writable_file(out, "--json-out" if args.json_out else "output_dir")
    r = run_bench(cfg, input_hw=args.input_size, batch_sizes=args.batch_sizes, warmup=args.warmup, runs=args.runs,
                  threads=args.threads, device=args.device, weights=args.weights or "", mode=args.mode,
                  flops=not args.no_flops)
    print(format_bench(r))
    save_bench(r, out)
    print(f"wrote {out}")
    return 0


def cmd_recipe(args) -> int:
    from ..engine.recipe import recipe_text  # lazy: CLI start-up time

    cfg = _load_cfg(args)
    print(recipe_text(cfg, world_size=args.world_size, name=str(args.config)))
    return 0


def cmd_convert(args) -> int:
    from ..compat.official import convert  # lazy: CLI start-up time

    require_writable_file(args.out, "--out")
    out = convert(args.from_official, args.checkpoint, args.out, config=args.config, kind=args.kind)
    print(f"wrote {out}")
    return 0


def cmd_reference_check(args) -> int:
    from ..compat.official import format_report, reference_check  # lazy: CLI start-up time

    report = reference_check(args.dir)
    print(format_report(report))
    return 0 if all(err <= tol for _, err, tol in report) else 1


def cmd_demo(args) -> int:
    from ..demo import run_demo  # lazy: CLI start-up time

    require_writable_dir(args.out, "--out")
    kw = {k: v for k, v in (("method", args.method), ("minutes", args.minutes)) if v is not None}
    return run_demo(out=args.out, kpt_threshold=args.kpt_threshold, **kw)


# --------------------------------------------------------------------------------------------------------------
def build_parser(method_commands: bool = True) -> argparse.ArgumentParser:
    """The ``regpose`` parser; ``method_commands=False`` leaves out the commands methods add (which import them)."""
    p = _Parser(prog="regpose", description="Direct-regression multi-person pose estimation.",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    from .. import __version__  # lazy: CLI start-up time
    p.add_argument("--version", action="version", version=f"regpose {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("synth", help="generate the built-in synthetic crowd dataset")
    s.add_argument("out", help="output folder (images/ and annotations.json)")
    s.add_argument("--num-images", type=positive_int, default=1000, help="how many images (default 1000)")
    s.add_argument("--seed", type=int, default=0,
                   help="random seed: the same seed and options give the same bytes (default 0)")
    s.add_argument("--format", choices=["coco", "crowdpose", "mpii"], default="coco",
                   help="keypoint layout of the annotations: COCO-17, CrowdPose-14 or MPII-16 (default coco)")
    s.add_argument("--size", type=size_pair, default=(256, 256), metavar="WxH", help="image size (default 256x256)")
    s.add_argument("--max-people", type=positive_int, default=6, help="at most this many people per image (default 6)")
    s.set_defaults(fn=cmd_synth)

    s = sub.add_parser("evaluate", help="COCO / CrowdPose OKS AP, MPII PCKh of a results json")
    s.add_argument("--gt", required=True, help="ground-truth annotation json")
    s.add_argument("--results", required=True, help="COCO keypoint results json")
    s.add_argument("--dataset", choices=["coco", "crowdpose", "ochuman", "mpii"], default="coco")
    s.add_argument("--json-out", help="also write the metrics as JSON")
    s.set_defaults(fn=cmd_evaluate)

    s = sub.add_parser("analyze", help="where keypoint AP is lost: per-joint errors, strata, oracle AP ceilings")
    s.add_argument("--gt", required=True, help="ground-truth annotation json")
    s.add_argument("--results", required=True, help="COCO keypoint results json")
    s.add_argument("--dataset", choices=["coco", "crowdpose", "ochuman"], default="coco")
    s.add_argument("--json-out", help="also write the report as JSON")
    s.set_defaults(fn=cmd_analyze)

    s = sub.add_parser("show-data", help="render augmented training samples with their targets")
    s.add_argument("config", help="method config (YAML) whose data and transform are shown")
    s.add_argument("--out", required=True, help="output folder for the pictures (sample_XX_<image id>.png)")
    s.add_argument("--num", type=positive_int, default=8, help="how many samples (default 8)")
    s.add_argument("--split", choices=["train", "val"], default="train",
                   help="train: the training transform with its augmentation; val: the test transform "
                        "(default train)")
    s.add_argument("--seed", type=int, default=0, help="picks the samples and their augmentation (default 0)")
    s.add_argument("overrides", nargs="*", help="dotted config overrides key=value")
    s.set_defaults(fn=cmd_show_data)

    s = sub.add_parser("train", help="train a model (torchrun for several processes / nodes)")
    s.add_argument("config")
    s.add_argument("--output-dir", help="run folder (default: runs/<config name>)")
    s.add_argument("--resume", action="store_true", help="continue from <output-dir>/last.pth")
    s.add_argument("--overwrite", action="store_true",
                   help="remove the run already in <output-dir> (checkpoints, metrics) and start over")
    s.add_argument("--device", default="auto", help="auto, cpu or cuda")
    s.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. train.lr=1e-4 model.num_queries=50")
    s.set_defaults(fn=cmd_train)

    s = sub.add_parser("test", help="evaluate trained weights on the config's validation split")
    s.add_argument("config")
    s.add_argument("--weights", required=True)
    s.add_argument("--split", default="val", choices=["val", "train"])
    s.add_argument("--flip", action="store_true", help="flip test")
    s.add_argument("--scales", type=positive_float, nargs="+", help="multi-scale test factors, e.g. 0.5 1 2")
    s.add_argument("--strict", action="store_true",
                   help="stop at the first unreadable image (default: report it, skip it, evaluate the rest)")
    s.add_argument("--output-dir")
    s.add_argument("--device", default="auto")
    s.add_argument("overrides", nargs="*")
    s.set_defaults(fn=cmd_test)

    s = sub.add_parser("bench", help="params, GFLOPs, latency, throughput, peak memory")
    s.add_argument("config")
    s.add_argument("--input-size", type=size_pair, metavar="HxW",
                   help="network input, height first (default: the config's data.input_size, which is WxH)")
    s.add_argument("--batch-sizes", type=positive_int, nargs="+", default=[1])
    s.add_argument("--runs", type=positive_int, default=10)
    s.add_argument("--warmup", type=int, default=2)
    s.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's)")
    s.add_argument("--device", default="cpu")
    s.add_argument("--weights")
    s.add_argument("--mode", choices=["forward", "predict"], default="forward",
                   help="forward: network only; predict: network + decoding")
    s.add_argument("--no-flops", action="store_true")
    s.add_argument("--json-out")
    s.add_argument("overrides", nargs="*")
    s.set_defaults(fn=cmd_bench)

    s = sub.add_parser("recipe", help="the effective training recipe: optimizer, parameter groups, schedule, "
                                      "batch, augmentation, losses, init, test settings")
    s.add_argument("config")
    s.add_argument("--world-size", type=int, default=1, help="number of training processes (GPUs) to show it for")
    s.add_argument("overrides", nargs="*")
    s.set_defaults(fn=cmd_recipe)

    s = sub.add_parser("convert", help="convert an official checkpoint to regpose weights")
    s.add_argument("--from-official", required=True, metavar="METHOD",
                   help="the method the checkpoint is for (one whose MethodSpec names an official converter, "
                        "e.g. dekr)")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--config", help="check the converted weights load into this config's model")
    s.add_argument("--kind", default="model", choices=["model", "rescore"],
                   help="DEKR only: 'rescore' converts the rescoring net")
    s.set_defaults(fn=cmd_convert)

    s = sub.add_parser("reference-check", help="compare our converted model with official reference outputs")
    s.add_argument("dir")
    s.set_defaults(fn=cmd_reference_check)

    from ..demo import DEFAULT_METHOD, DEFAULT_MINUTES, SYNTHETIC_CONFIGS  # lazy: CLI start-up time
    s = sub.add_parser("demo", help="synthetic data -> train a few CPU minutes -> evaluate -> rendered predictions")
    s.add_argument("--method", default=None, choices=list(SYNTHETIC_CONFIGS),
                   help=f"method to train on its synthetic config (default: {DEFAULT_METHOD})")
    s.add_argument("--minutes", type=positive_float, default=None,
                   help=f"training budget in minutes (default: {DEFAULT_MINUTES:g})")
    s.add_argument("--out", default="runs/demo", help="output folder; the run goes to OUT/METHOD (default runs/demo)")
    s.add_argument("--kpt-thr", dest="kpt_threshold", type=finite_float, metavar="T",
                   help="keypoints scoring at least T are drawn solid, the others faded and dashed (default: the "
                        "method's, from what its keypoint scores mean)")
    s.set_defaults(fn=cmd_demo)

    # Commands whose arguments live with their implementation (inference surface).
    for name, help_text, add_arguments, run in (
            ("infer", inference.INFER_HELP, inference.add_infer_arguments, inference.run_infer),
            ("export", inference.EXPORT_HELP, inference.add_export_arguments, inference.run_export)):
        s = sub.add_parser(name, help=help_text)
        add_arguments(s)
        s.set_defaults(fn=run)
    if method_commands:
        _add_method_commands(sub)
    return p


def _add_method_commands(sub) -> None:
    """The commands methods add (``MethodSpec.commands``, e.g. DEKR's ``train-rescore``). Finding them imports every
    method, so :func:`main` adds them only when the command line names no built-in command."""
    from ..models.registry import get_method, method_names  # lazy: CLI start-up time (imports every method)

    for method in method_names():
        for name, module in get_method(method).commands.items():
            mod = importlib.import_module(module)
            s = sub.add_parser(name, help=mod.HELP)
            mod.add_arguments(s)
            s.set_defaults(fn=mod.run)


def _needs_method_commands(parser: argparse.ArgumentParser, argv: list[str]) -> bool:
    """The commands methods add are needed for the top-level help (no command word: the first argument that is no
    option, the top level having only flags) and for a command word that is not built in."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    word = next((a for a in argv if not a.startswith("-")), None)
    return "--version" not in argv if word is None else word not in sub.choices


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(method_commands=False)
    if _needs_method_commands(parser, argv):
        parser = build_parser()
    # Dotted overrides may come anywhere, also after options: `train CFG --resume train.lr=1e-4`.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides or []) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "fn", None):
        parser.print_help()
        return 2
    try:
        return int(args.fn(args) or 0)
    except RegposeError as e:
        _close_progress_bars()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _close_progress_bars()
        print("interrupted", file=sys.stderr)
        return 130


def _close_progress_bars() -> None:
    """A bar still on screen would swallow the start of the error line (it is drawn with carriage returns)."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


if __name__ == "__main__":
    sys.exit(main())
