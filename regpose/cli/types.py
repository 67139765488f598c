"""argparse value types of the command line: a value out of range is argparse's one-line usage error naming the
option, at the start, instead of a traceback (or a silently changed meaning) deep inside the command."""
from __future__ import annotations

import argparse
import math

__all__ = ["size_pair", "positive_int", "positive_float", "finite_float"]


def size_pair(text: str) -> tuple[int, int]:
    """``AxB`` (e.g. ``256x192``) -> (A, B), both positive, in the order written: each option names its order in its
    metavar (``WxH`` or ``HxW``)."""
    try:
        a, b = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected AxB with positive integers (e.g. 256x192), got {text!r}") from None
    if a <= 0 or b <= 0:
        raise argparse.ArgumentTypeError(f"expected AxB with positive integers (e.g. 256x192), got {text!r}")
    return a, b


def _checked(text: str, convert, valid, expected: str):
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not valid(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _checked(text, int, lambda v: v > 0, "a positive integer")


def finite_float(text: str) -> float:
    return _checked(text, float, math.isfinite, "a finite number")


def positive_float(text: str) -> float:
    return _checked(text, float, lambda v: math.isfinite(v) and v > 0, "a positive number")
