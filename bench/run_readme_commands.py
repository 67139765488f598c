"""Run the README's commands as written, in a fresh folder, after the README's own first step.

    .venv/bin/python -m bench.run_readme_commands                  # a temporary folder, demo budget 1 minute
    .venv/bin/python -m bench.run_readme_commands --dir /tmp/readme --minutes 5

`make demo` (which creates .venv, then runs `regpose demo`) is replaced by `regpose demo --minutes M` with this
interpreter; then every runnable ```bash command (bench/readme_commands.py: those not in NOT_RUN) and the README's
Python example run in that folder, in README order, with the repository's configs/ linked in. Prints one row per
command (README line, exit status, seconds, last output line) and exits non-zero if any failed.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.readme_commands import NOT_RUN, REPO, readme_commands


def _run(argv: list[str], cwd: Path, env: dict) -> tuple[int, float, str]:
    t0 = time.perf_counter()
    r = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    lines = [l for l in (r.stdout + r.stderr).splitlines() if l.strip()]
    return r.returncode, time.perf_counter() - t0, (lines[-1] if lines else "")[:110]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", help="working folder (default: a new temporary one)")
    ap.add_argument("--minutes", type=float, default=1.0, help="demo training budget replacing `make demo`'s 5")
    args = ap.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="regpose_readme_"))
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "configs").exists():
        (work / "configs").symlink_to(REPO / "configs")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    rows = []
    demo = [sys.executable, "-m", "regpose", "demo", "--minutes", str(args.minutes)]
    rows.append(("make demo -> regpose demo --minutes %g" % args.minutes, *_run(demo, work, env)))
    for cmd in readme_commands():
        if cmd.not_run_reason() is None:
            rows.append((f"README:{cmd.line} {cmd.text[:60]}",
                         *_run([sys.executable, "-m", "regpose", *cmd.regpose_argv()], work, env)))
    readme = (REPO / "README.md").read_text()
    python = re.search(r"```python\n(.*?)```", readme[readme.index("## Python\n"):], re.S).group(1)
    rows.append(("README ## Python example", *_run([sys.executable, "-c", python], work, env)))
    print(f"\nworking folder: {work}")
    for name, code, seconds, last in rows:
        print(f"{'ok  ' if code == 0 else 'FAIL'} {seconds:7.1f} s  {name}\n                 {last}")
    print(f"not run ({len(NOT_RUN)} reasons): " + "; ".join(f"{k!r}: {v}" for k, v in NOT_RUN.items()))
    failed = sum(code != 0 for _, code, _, _ in rows)
    print(f"{len(rows) - failed}/{len(rows)} ran as written")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
