"""The test suite finds its reference data only where the README says: ``$REGPOSE_SHARED`` or ``../shared``."""
from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO


def test_missing_reference_data_is_one_line_naming_the_variable(tmp_path):
    """A machine without the shared folder gets one line telling how to point at it, not an import traceback
    (and no machine path is tried behind the user's back)."""
    env = {**os.environ, "REGPOSE_SHARED": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only",
                        "tests/test_architecture.py"], cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 4, r.stdout + r.stderr
    lines = [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]
    assert lines == [f"Exit: reference data not found: REGPOSE_SHARED {tmp_path} holds no reference/ folder; set "
                     f"REGPOSE_SHARED=/path/to/shared (the folder holding reference/ and data/real/)"], lines
