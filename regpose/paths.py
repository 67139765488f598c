"""Output locations checked before the work: a command that would fail to write its results at the end (after
hours of training or thousands of frames) fails at the start instead, in one line naming the flag and the path.

The checks create nothing that stays: a folder that does not exist yet is probed by creating (and removing) a
temporary folder in its nearest existing parent, so commands that treat an existing run folder specially (``train``
without ``--resume``) see the same file system as before the check.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import RegposeError

__all__ = ["OutputError", "require_writable_dir", "require_writable_file"]


class OutputError(RegposeError):
    """An output folder or file that cannot be written."""


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe(folder: Path, flag: str, path: Path) -> None:
    """Create and remove a temporary entry in the existing ``folder``: the real test of writability (permission
    bits say nothing for root, read-only mounts or pseudo file systems such as /proc)."""
    try:
        tmp = tempfile.mkdtemp(prefix=".regpose-write-check-", dir=folder)
    except OSError as e:
        raise OutputError(f"{flag} {path}: cannot write in {folder} ({e.strerror or e})") from None
    os.rmdir(tmp)


def _check_folder(folder: Path, flag: str, shown: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{flag} {shown}: {folder} is a file, expected a folder")
    base = _nearest_existing(folder)
    if not base.is_dir():
        raise OutputError(f"{flag} {shown}: {base} is a file, so no folder can be created below it")
    _probe(base, flag, shown)


def require_writable_dir(path: str | os.PathLike, flag: str) -> Path:
    """Raise :class:`OutputError` unless ``path`` is (or can be created as) a folder this process can write in.
    ``flag`` names the option or config key the path came from (``--out``, ``output_dir``...)."""
    p = Path(path).expanduser()
    _check_folder(p, flag, p)
    return p


def require_writable_file(path: str | os.PathLike, flag: str) -> Path:
    """Raise :class:`OutputError` unless the file ``path`` can be written: not a folder, and its folder writable
    or creatable."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise OutputError(f"{flag} {p}: is a folder, expected a file name")
    _check_folder(p.parent, flag, p)
    return p
