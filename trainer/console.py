"""The lines meant for the person watching a run, and the live progress bar.

`info(...)` logs to the Python logger `podfit.console`: `launcher.logs`
shows these records on the console at the default verbosity (with only the
`[pN]` tag), where other INFO records go to the process' log file only.
Anything may log here (no import needed: `logging.getLogger("podfit.console")`);
by convention only process 0 does.

The bar is one line rewritten in place (`\\r`) on a terminal. A log line
printed while it is shown first clears it (`clear_bar`, called by the
console handler); the next update draws it again.

Keras-free and JAX-free: the launcher imports it before the JAX configuration.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import TextIO

LOGGER = "podfit.console"
# "bar" or "lines" forces the progress mode; unset: a bar when stderr is a terminal.
# scripts/simulate.py sets "bar" for process 0 when its own output is a terminal.
MODE_ENV = "PODFIT_PROGRESS"
# Clears from the cursor to the end of the line (after a frame the cursor is at column 0).
CLEAR = "\x1b[K"

_logger = logging.getLogger(LOGGER)
_lock = threading.Lock()
_bar_shown = False


def duration(seconds: float) -> str:
    """`seconds` for people: 42s, 3m07s, 2h05m."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def info(message: str, *args) -> None:
    """One console line (and a line in the process' log file)."""
    _logger.info(message, *args, stacklevel=2)


def stream() -> TextIO:
    """Where console lines and the bar go: stderr, like the log lines."""
    return sys.stderr


def bar_mode() -> bool:
    """Whether progress is a live bar (terminal) or a line every `log_every` steps."""
    mode = os.environ.get(MODE_ENV, "").strip().lower()
    if mode in ("bar", "lines"):
        return mode == "bar"
    if mode:
        raise ValueError(f"{MODE_ENV} must be 'bar' or 'lines'. Received: {MODE_ENV}={mode}")
    return stream().isatty()


def _draw(text: str, *, last: bool) -> None:
    global _bar_shown
    with _lock:
        out = stream()
        out.write(CLEAR + text + ("\n" if last else "\r"))
        out.flush()
        _bar_shown = not last


def show_bar(text: str) -> None:
    """Draws `text` as the bar (in place of the previous one)."""
    _draw(text, last=False)


def end_bar(text: str) -> None:
    """Draws `text` as the bar's last state and leaves it on its own line."""
    _draw(text, last=True)


def clear_bar() -> None:
    """Clears a shown bar so that a log line can take its place."""
    global _bar_shown
    with _lock:
        if _bar_shown:
            stream().write(CLEAR)
            _bar_shown = False
