"""``regpose train-rescore``: DEKR's rescoring net trained from a model's predictions (a command DEKR's
``MethodSpec.commands`` adds to the CLI)."""
from __future__ import annotations

import argparse

from ..config import load_config
from ..engine.rescore import train_rescore
from ..paths import require_writable_file
from .types import positive_int

__all__ = ["HELP", "add_arguments", "run"]

HELP = "DEKR: train the rescoring net from a model's predictions"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="DEKR config (YAML) of the model whose predictions are rescored")
    p.add_argument("--weights", required=True, help="the model's checkpoint (.pth)")
    p.add_argument("--out", required=True, help="the rescoring net's checkpoint to write (.pth)")
    p.add_argument("--max-images", type=positive_int, help="train from at most this many training images")
    p.add_argument("overrides", nargs="*", help="dotted config overrides key=value")


def run(args) -> int:
    cfg = load_config(args.config, args.overrides or [])
    require_writable_file(args.out, "--out")
    out = train_rescore(cfg, args.weights, args.out, max_images=args.max_images)
    print(f"wrote {out}")
    return 0
