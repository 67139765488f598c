"""Metrics to the console, a JSONL file and (optionally) TensorBoard; rank 0 only."""
from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path

__all__ = ["MetricWriter", "get_logger", "format_seconds"]


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is *now*: a handler bound to the stream of its creation breaks ("Logging
    error" tracebacks) once that stream is replaced or closed, e.g. when the CLI runs in-process several times."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def get_logger(name: str = "regpose") -> logging.Logger:
    logger = logging.getLogger(name)
    if not logger.handlers:
        h = _StderrHandler()
        h.setFormatter(logging.Formatter("[%(asctime)s %(name)s] %(message)s", "%H:%M:%S"))
        logger.addHandler(h)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def format_seconds(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class MetricWriter:
    """Appends one JSON object per record to ``metrics.jsonl``; mirrors scalars to TensorBoard if asked."""

    def __init__(self, out_dir: str | Path, tensorboard: bool = False, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(Path(out_dir) / "tensorboard"))
            except ImportError:
                get_logger().warning("tensorboard is not installed (pip install tensorboard); logging to JSONL only")

    def write(self, record: dict, step: int, prefix: str = "train") -> None:
        if not self.enabled:
            return
        rec = {"time": round(time.time(), 3), "iter": step, "split": prefix, **record}
        with self.path.open("a") as f:
            f.write(json.dumps(rec, default=float) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(f"{prefix}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
