"""Dry-run every shipped config (or the given ones): build the full-size model, take one real optimizer step and
evaluate once on generated images (regpose.engine.dryrun, the code path of tests/test_shipped_configs.py). Each
config runs in its own process so its time and peak memory are its own.

The default test suite runs the configs that fit CI; this script also runs the full-size QueryPose models that the
suite only checks on the meta device (188M-494M parameters: a step peaks at 4.0-4.7 GB for the light R-50 /
HRNet-W48 and needs ~7-10 GB for the 322M-494M ones; an evaluation takes minutes on one core).

    OMP_NUM_THREADS=1 python -m bench.check_every_config                   # every config
    OMP_NUM_THREADS=1 python -m bench.check_every_config configs/querypose/querypose_swin_l_coco.yaml
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench._common import REPO, parser, peak_rss_mib, set_threads, timed, write_json


def shipped_configs() -> list[Path]:
    return sorted(p for p in (REPO / "configs").glob("*/*.yaml") if p.parent.name != "_base_")


def run_one(config: str, threads: int) -> dict:
    """Dry-run one config in this process; its report plus this process's peak resident memory."""
    from regpose.engine.dryrun import dry_run       # the child process only: the parent stays light

    set_threads(threads)
    reports = []
    with tempfile.TemporaryDirectory() as work:
        t = timed(lambda: reports.append(dry_run(config, work)), runs=1, warmup=0)
    out = dataclasses.asdict(reports[0])
    out.update(seconds_total=t["median_ms"] / 1000, peak_rss_gb=peak_rss_mib() / 1024)
    return out


def main(argv=None) -> int:
    ap = parser(__doc__)
    ap.add_argument("configs", nargs="*", help="config files (default: every shipped config)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json-out", help="write the reports as JSON")
    ap.add_argument("--one", help=argparse.SUPPRESS)   # child mode: one config, JSON on the last stdout line
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one, args.threads)))
        return 0
    configs = [Path(c).resolve() for c in args.configs] or shipped_configs()
    reports, failed = [], 0
    print(f"{'config':<58}{'params':>13}{'train s':>9}{'eval s':>8}{'total s':>9}{'peak GB':>9}  grads")
    for config in configs:
        r = subprocess.run([sys.executable, "-m", "bench.check_every_config", "--one", str(config),
                            "--threads", str(args.threads)], capture_output=True, text=True, cwd=REPO)
        name = str(config.relative_to(REPO)) if config.is_relative_to(REPO) else str(config)
        if r.returncode != 0:
            failed += 1
            last = (r.stderr.strip().splitlines() or ["?"])[-1]
            print(f"{name:<58}FAILED: {last}")
            reports.append({"config": name, "error": last})
            continue
        rep = json.loads(r.stdout.strip().splitlines()[-1])
        reports.append(rep)
        print(f"{name:<58}{rep['parameters']:>13,}{rep['seconds_train']:>9.1f}{rep['seconds_eval']:>8.1f}"
              f"{rep['seconds_total']:>9.1f}{rep['peak_rss_gb']:>9.2f}  "
              f"{rep['tensors_with_gradient']}/{rep['trainable_tensors']}")
    if args.json_out:
        write_json(args.json_out, reports)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
