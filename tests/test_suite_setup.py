"""The test suite finds its reference data only where the README says: ``$REGPOSE_SHARED``, ``../shared``, or
``../shared`` beside the checkout a clone was made from."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO


def test_missing_reference_data_is_one_line_naming_the_variable(tmp_path):
    """A machine without the shared folder gets one line telling how to point at it, not an import traceback
    (and no machine path is tried behind the user's back)."""
    env = {**os.environ, "REGPOSE_SHARED": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only",
                        "tests/test_architecture.py"], cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 4, r.stdout + r.stderr
    lines = [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]
    assert lines == [f"Exit: reference data not found (REGPOSE_SHARED {tmp_path}: no reference/ folder); set "
                     f"REGPOSE_SHARED=/path/to/shared (the folder holding reference/ and data/real/)"], lines


def test_a_clone_of_a_clone_finds_the_shared_folder_beside_the_original(tmp_path):
    """A clean clone (CI, a reviewer's scratch folder) does not sit beside ``shared/``: the suite follows the
    clones' local origins back to a checkout that does, without any machine path written in the code."""
    first, second = tmp_path / "a" / "clone", tmp_path / "b" / "clone"
    subprocess.run(["git", "clone", "-q", "--no-checkout", str(REPO), str(first)], check=True)
    subprocess.run(["git", "clone", "-q", "--no-checkout", str(first), str(second)], check=True)
    (second / "tests").mkdir()
    (second / "tests" / "conftest.py").write_text((REPO / "tests" / "conftest.py").read_text())
    env = {k: v for k, v in os.environ.items() if k != "REGPOSE_SHARED"}
    out = subprocess.run([sys.executable, "-c", "import conftest; print(conftest.SHARED_PROBLEM or conftest.SHARED)"],
                         cwd=second / "tests", env=env, capture_output=True, text=True, check=True).stdout.strip()
    from conftest import SHARED
    if os.environ.get("REGPOSE_SHARED"):
        pytest.skip("this run's shared folder came from REGPOSE_SHARED, not from beside a checkout")
    assert out == str(SHARED) and (Path(out) / "reference").is_dir(), out
