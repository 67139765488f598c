"""Launch a tiny training run (used by the engine tests, also under torchrun).

usage: python run_tiny.py OUT [--resume | --overwrite] [key=value ...]   (train.* overrides; model.dropout=...)
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from regpose.config import apply_overrides, load_config  # noqa: E402
from regpose.engine.trainer import train  # noqa: E402
from tiny_method import TinyDataset  # noqa: E402,F401 - registers "tiny"

if __name__ == "__main__":
    torch.set_num_threads(1)
    out, rest = sys.argv[1], sys.argv[2:]
    flags = {a for a in rest if a.startswith("--")}
    overrides = [a for a in rest if a not in flags]
    raw = {"method": "tiny", "output_dir": out,
           "train": {"batch_size": 4, "iters": 8, "lr": 0.01, "num_workers": 0, "log_period": 2, "seed": 3}}
    cfg = load_config(apply_overrides(raw, overrides))
    train(cfg, resume="--resume" in flags, overwrite="--overwrite" in flags, train_dataset=TinyDataset())
