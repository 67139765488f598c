"""Progress display for every long loop (training, evaluation, inference, data generation).

On a terminal: a tqdm bar redrawn in place. Anywhere else (stderr redirected to a log file, a pipe, a CI log) a bar
redrawn with carriage returns is a flood (a 200-image evaluation wrote ~30 kB of ``\\r`` lines), so the same
counters are written as one plain line every :data:`LOG_PERIOD_SECONDS` and once at the end.
"""
from __future__ import annotations

import sys
import time

from tqdm import tqdm

__all__ = ["progress", "LineProgress", "LOG_PERIOD_SECONDS"]

#: seconds between two progress lines in a log file
LOG_PERIOD_SECONDS = 10.0

_LINE_FORMAT = "{desc}: {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}] {percentage:.0f}%"
_LINE_FORMAT_NO_TOTAL = "{desc}: {n_fmt} {unit} [{elapsed}, {rate_fmt}{postfix}]"


class LineProgress(tqdm):
    """tqdm for a log file: the bar's counters as a newline-terminated line, at most one per
    :data:`LOG_PERIOD_SECONDS` (updates, postfix changes and tqdm's monitor thread included), the first at the
    start and the last when the bar closes; never a carriage return or a cursor move."""

    def __init__(self, *args, **kwargs):
        self._last_line = float("-inf")
        self._closing = False
        kwargs["leave"] = False                # tqdm's own final redraw ends in '\r' or an extra '\n': ours instead
        kwargs.setdefault("mininterval", LOG_PERIOD_SECONDS)
        kwargs.setdefault("maxinterval", LOG_PERIOD_SECONDS)
        total = kwargs.get("total")
        if total is None and args and hasattr(args[0], "__len__"):
            total = len(args[0])
        kwargs.setdefault("bar_format", _LINE_FORMAT if total else _LINE_FORMAT_NO_TOTAL)
        super().__init__(*args, **kwargs)

    def display(self, msg=None, pos=None):
        """Write the line when the period has passed or the bar closes. Returns False so that tqdm adds nothing
        (it writes '\r' after a successful clearing display)."""
        now = time.monotonic()
        if not self._closing and (self.disable or msg == "" or now - self._last_line < LOG_PERIOD_SECONDS):
            return False
        self._last_line = now
        self.fp.write((msg or self.__str__()).rstrip() + "\n")
        self.fp.flush()
        return False

    def clear(self, nolock=False):
        """Nothing drawn in place, nothing to clear (``tqdm.write`` calls this around its message)."""

    def close(self):
        if not self._closing and not self.disable:
            self._closing = True
            super().close()


def progress(iterable=None, *, desc: str = "", total=None, unit: str = "it", disable: bool = False, file=None,
             leave: bool = True, **kwargs) -> tqdm:
    """A tqdm bar on a terminal, a :class:`LineProgress` elsewhere (decided by ``file.isatty()``, default stderr).
    Arguments as tqdm's."""
    file = file if file is not None else sys.stderr
    interactive = bool(getattr(file, "isatty", lambda: False)())
    if interactive or disable:
        return tqdm(iterable, desc=desc, total=total, unit=unit, disable=disable, file=file, leave=leave,
                    dynamic_ncols=True, **kwargs)
    return LineProgress(iterable, desc=desc, total=total, unit=unit, file=file, **kwargs)   # its lines stay
