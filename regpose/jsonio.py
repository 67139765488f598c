"""JSON files in and out: fast loading of large annotation / results files with one-line errors."""
from __future__ import annotations

import gc
import json
from pathlib import Path

from .errors import DataError

__all__ = ["read_json", "non_finite"]


def read_json(path: str | Path, what: str = "annotation"):
    """Parse a JSON file; a missing file, invalid JSON or a binary file raise a one-line :class:`DataError`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} file not found: {path}")
    gc_was_on = gc.isenabled()
    gc.disable()  # parsing allocates millions of objects; cyclic GC passes over a large heap dominate otherwise
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text JSON file") from None
    finally:
        if gc_was_on:
            gc.enable()


def non_finite(value) -> str:
    """What is wrong with a JSON value (a number or a list of numbers) that is not finite, for error messages: JSON
    null becomes NaN when converted to floats, but the user wrote null, so name it."""
    values = value if isinstance(value, (list, tuple)) else [value]
    return "null" if any(v is None for v in values) else "NaN or infinity"
