"""Shared fixtures: where the reference data lives, small deterministic settings for CPU tests."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def find_shared() -> tuple[Path, str]:
    """The shared folder with official reference data and real samples (never copied into the repo):
    ``$REGPOSE_SHARED`` if set, else the repository's sibling ``../shared``. Returns (folder, problem or "")."""
    if os.environ.get("REGPOSE_SHARED"):
        shared, how = Path(os.environ["REGPOSE_SHARED"]), "REGPOSE_SHARED"
    else:
        shared, how = REPO.parent / "shared", "the repository's sibling folder"
    if (shared / "reference").is_dir():
        return shared, ""
    return shared, (f"reference data not found: {how} {shared} holds no reference/ folder; set "
                    f"REGPOSE_SHARED=/path/to/shared (the folder holding reference/ and data/real/)")


SHARED, SHARED_PROBLEM = find_shared()
REFERENCE = SHARED / "reference"
REAL = SHARED / "data" / "real"


def pytest_configure(config):
    if SHARED_PROBLEM:
        pytest.exit(SHARED_PROBLEM, returncode=4)


@pytest.fixture(autouse=True)
def _deterministic_cpu():
    torch.manual_seed(0)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield


@pytest.fixture
def reference_dir() -> Path:
    return REFERENCE


@pytest.fixture
def real_dir() -> Path:
    return REAL


@pytest.fixture
def single_thread():
    """Small models run fastest on one thread, and stay robust when other jobs share the cores. Modules opt in
    with ``pytestmark = pytest.mark.usefixtures("single_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
