"""Shared fixtures: where the reference data lives, small deterministic settings for CPU tests."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def find_shared() -> Path:
    """The shared folder with official reference data and real samples (never copied into the repo)."""
    candidates = [os.environ.get("REGPOSE_SHARED", ""), REPO.parent / "shared", "/work/shared"]
    for c in candidates:
        if c and (Path(c) / "reference").is_dir():
            return Path(c)
    raise RuntimeError("reference data not found: set REGPOSE_SHARED to the folder holding reference/ and data/")


SHARED = find_shared()
REFERENCE = SHARED / "reference"
REAL = SHARED / "data" / "real"


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
