"""Speed of the built-in synthetic crowd generator (images per CPU-second on one core).

A speed threshold is machine dependent (the same code measured 48 and 60+ images/s on two 2-core machines), so it is
a benchmark, not a unit test. Run:

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.bench_synthetic_speed [--images 200]
"""
from __future__ import annotations

import tempfile

from bench._common import cpu_model, parser, set_threads, timed
from regpose.data.synthetic import generate


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--images", type=int, default=200)
    args = ap.parse_args()
    set_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        t = timed(lambda: generate(f"{tmp}/speed", args.images, seed=0, progress=False), runs=1, warmup=0)
    cpu, wall = t["cpu_median_ms"] / 1000, t["median_ms"] / 1000
    print(f"{cpu_model()}, 1 thread: {args.images} images in {cpu:.2f} CPU-s "
          f"({args.images / cpu:.1f} images per CPU-second; wall {wall:.2f} s)")


if __name__ == "__main__":
    main()
