"""Shared fixtures: where the reference data lives, small deterministic settings for CPU tests."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _origin_checkout(repo: Path) -> Path | None:
    """The working tree ``repo`` was cloned from, when its ``origin`` is a folder on this machine (a clean clone
    for CI or a reviewer's scratch clone: the shared folder sits beside the original checkout, not the clone)."""
    try:
        url = subprocess.run(["git", "-C", str(repo), "config", "--get", "remote.origin.url"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if not url or "://" in url and not url.startswith("file://") or (":" in url and "@" in url):
        return None
    path = Path(url.removeprefix("file://")).expanduser()
    path = path if path.is_absolute() else (repo / path).resolve()
    return path.parent if path.name == ".git" else path


def find_shared() -> tuple[Path, str]:
    """The shared folder with official reference data and real samples (never copied into the repo), the first
    that holds ``reference/`` of: ``$REGPOSE_SHARED``; the repository's sibling ``../shared``; the sibling
    ``../shared`` of the checkout this one was cloned from (local ``origin``s, followed up to three clones). Returns (folder, problem or "")."""
    if os.environ.get("REGPOSE_SHARED"):
        candidates = [(Path(os.environ["REGPOSE_SHARED"]), "REGPOSE_SHARED")]
    else:
        candidates = [(REPO.parent / "shared", "the repository's sibling folder")]
        repo = REPO
        for _ in range(3):          # a clone of a clone of the checkout: follow local origins a few steps
            repo = _origin_checkout(repo)
            if repo is None:
                break
            candidates.append((repo.parent / "shared", f"the sibling folder of the origin {repo}"))
    for shared, _ in candidates:
        if (shared / "reference").is_dir():
            return shared, ""
    tried = "; ".join(f"{how} {shared}" for shared, how in candidates)
    return candidates[0][0], (f"reference data not found ({tried}: no reference/ folder); set "
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
