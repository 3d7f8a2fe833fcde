"""The console of scripts/simulate.py: every process' output, tagged, on one stdout.

Each process' lines are shown with a `[pN] ` prefix. The launcher's own log
lines (already prefixed) are filtered by the launcher (launcher/logs.py) and
passed on as they are. What a process prints outside of logging (C++
libraries, tracebacks before the log is set up) is appended to its log file
once the launcher has created it, and shown unless routine (gloo's pieces,
blank lines) or always with `detailed`. A process' progress bar (frames
ended by `\\r`) is drawn in place, below the lines.
"""

from __future__ import annotations

import os
import re
import sys
import threading

from trainer import console  # Keras-free.

# gloo's line at every new communicator ("[Gloo] Rank 0 is connected to 1
# peer ranks. Expected number of connected peer ranks is : 1"), printed from
# C++ threads piece by piece: lines made of its pieces only are routine (to
# the log file only, unless detailed), however they interleaved.
_GLOO_PIECES = re.compile(
    r"\[Gloo\] Rank|is connected to|peer ranks\.|Expected number of connected peer ranks is :"
    r"|\d+|\s+"
)
_TOKEN = re.compile(rb"([^\r\n]*)([\r\n])")
_ESCAPES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def routine(line: str) -> bool:
    """Whether a line printed outside of logging comes with normal operation.

    A line made of gloo's pieces only is, blank lines and bare numbers
    included: its C++ threads print each line in pieces, and interleaved
    pieces leave such lines behind (a bare number printed by the model goes
    to the log file too, for the same reason).
    """
    return not _GLOO_PIECES.sub("", line)


class _LogFile:
    """Appends lines to a process' log file once the launcher has created it."""

    def __init__(self, path: str | None):
        self._path = path
        self._file = None

    def write(self, line: str) -> None:
        if self._file is None and self._path is not None and os.path.exists(self._path):
            self._file = open(self._path, "a", encoding="utf-8")  # noqa: SIM115
        if self._file is not None:
            self._file.write(line + "\n")
            self._file.flush()

    def __enter__(self) -> _LogFile:
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            self._file.close()


class Console:
    """stdout shared by the processes' reader threads (and the simulation's own lines).

    Args:
        detailed: Show routine lines too (the processes run with --verbosity >= 1).
        log_paths: Each process' log file (None: lines go to the console only).
    """

    def __init__(self, *, detailed: bool, log_paths: list[str] | None):
        self._detailed = detailed
        self._log_paths = log_paths
        self._lock = threading.Lock()
        # A process' progress bar (drawn last, below the lines): (index, text).
        self._bar: tuple[int, str] | None = None

    def write(self, text: str, *, bar_of: int | None = None) -> None:
        """Writes whole lines; a shown bar stays below them (`bar_of`: its process ends it)."""
        with self._lock:
            if self._bar is not None:
                sys.stdout.write(f"\r{console.CLEAR}")
                if self._bar[0] == bar_of:
                    self._bar = None
            sys.stdout.write(text)
            if self._bar is not None:
                sys.stdout.write(self._bar[1])
            sys.stdout.flush()

    def end_bar(self) -> None:
        """Leaves a shown bar as it is, above the lines that follow."""
        with self._lock:
            if self._bar is not None:
                self._bar = None
                sys.stdout.write("\n")

    def stream(self, index: int, pipe) -> None:
        """Passes process `index`'s output on until it closes: lines, and its bar frames."""
        prefix = f"[p{index}] "
        log = _LogFile(None if self._log_paths is None else self._log_paths[index])
        fd, pending = pipe.fileno(), b""
        with pipe, log:
            while chunk := os.read(fd, 65536):
                pending += chunk
                end = 0
                for match in _TOKEN.finditer(pending):
                    end = match.end()
                    self._token(index, prefix, log, match.group(1), match.group(2) == b"\r")
                pending = pending[end:]
            if pending:
                self._token(index, prefix, log, pending, False)

    def _show_bar(self, index: int, text: str) -> None:
        with self._lock:
            self._bar = (index, text)
            sys.stdout.write(f"\r{console.CLEAR}{text}")
            sys.stdout.flush()

    def _token(self, index: int, prefix: str, log: _LogFile, raw: bytes, frame: bool) -> None:
        text = _ESCAPES.sub("", raw.decode("utf-8", errors="replace"))
        if frame:  # A progress bar frame: drawn in place.
            if text:
                self._show_bar(index, f"{prefix}{text}")
            return
        if text.startswith(prefix):  # The launcher's log lines: it filtered them already.
            self.write(text + "\n")
            return
        # Printed outside of logging: to the log file, and shown unless routine.
        log.write(text)
        if self._detailed or not routine(text):
            self.write(f"{prefix}{text}\n", bar_of=index)
