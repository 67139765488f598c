"""Dry-run every shipped config (or the given ones): build the full-size model, take one real optimizer step and
evaluate once on generated images (regpose.engine.dryrun, the code path of tests/test_shipped_configs.py). Each
config runs in its own process so its time and peak memory are its own.

The default test suite runs the configs that fit CI; this script also runs the full-size QueryPose models that the
suite only checks on the meta device (188M-494M parameters: a step peaks at 4.0-4.7 GB for the light R-50 /
HRNet-W48 and needs ~7-10 GB for the 322M-494M ones; an evaluation takes minutes on one core).

    OMP_NUM_THREADS=1 python bench/check_every_config.py                   # every config
    OMP_NUM_THREADS=1 python bench/check_every_config.py configs/querypose/querypose_swin_l_coco.yaml
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def shipped_configs() -> list[Path]:
    return sorted(p for p in (REPO / "configs").glob("*/*.yaml") if p.parent.name != "_base_")


def run_one(config: str, threads: int) -> dict:
    """Dry-run one config in this process; its report plus this process's peak resident memory."""
    import torch

    from regpose.engine.dryrun import dry_run

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        report = dry_run(config, work)
    out = dataclasses.asdict(report)
    out.update(seconds_total=time.perf_counter() - t0,
               peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
        r = subprocess.run([sys.executable, __file__, "--one", str(config), "--threads", str(args.threads)],
                           capture_output=True, text=True)
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
        Path(args.json_out).write_text(json.dumps(reports, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
