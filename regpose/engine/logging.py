"""Metrics to the console, a JSONL file and (optionally) TensorBoard; rank 0 only."""
from __future__ import annotations

import json
import logging
import math
import os
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
    """Appends one JSON object per record to ``metrics.jsonl``; mirrors scalars to TensorBoard if asked.

    ``resume_from``: the iteration of the checkpoint a run resumes from. Records written after it (by the run
    that was interrupted) are dropped, and so are TensorBoard events, so every iteration appears once even when
    the checkpoint period is not a multiple of the log period."""

    def __init__(self, out_dir: str | Path, tensorboard: bool = False, enabled: bool = True,
                 resume_from: int | None = None):
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl"
        self.tb = None
        self.dropped = 0
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_from is not None:
            self.dropped = self._drop_after(resume_from)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                purge = None if resume_from is None else resume_from + 1
                self.tb = SummaryWriter(str(Path(out_dir) / "tensorboard"), purge_step=purge)
            except ImportError:
                get_logger().warning("tensorboard is not installed (pip install tensorboard); logging to JSONL only")

    def _drop_after(self, iteration: int) -> int:
        """Rewrite the file without records past ``iteration`` (or cut off by a kill mid-line); returns how many."""
        if not self.path.is_file():
            return 0
        lines = self.path.read_text().splitlines()
        keep = []
        for line in lines:
            try:
                if int(json.loads(line)["iter"]) <= iteration:
                    keep.append(line)
            except (ValueError, KeyError, TypeError):
                pass
        if len(keep) < len(lines):
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(line + "\n" for line in keep))
            os.replace(tmp, self.path)
        return len(lines) - len(keep)

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
