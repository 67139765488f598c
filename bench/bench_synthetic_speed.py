"""Speed of the built-in synthetic crowd generator (images per CPU-second on one core).

A speed threshold is machine dependent (the same code measured 48 and 60+ images/s on two 2-core machines), so it is
a benchmark, not a unit test. Run:

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_synthetic_speed.py [--images 200]
"""
from __future__ import annotations

import argparse
import platform
import tempfile
import time

import torch

from regpose.data.synthetic import generate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        cpu, wall = time.process_time(), time.perf_counter()
        generate(f"{tmp}/speed", args.images, seed=0, progress=False)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(f"{platform.processor() or platform.machine()}, 1 thread: {args.images} images in {cpu:.2f} CPU-s "
          f"({args.images / cpu:.1f} images per CPU-second; wall {wall:.2f} s)")


if __name__ == "__main__":
    main()
