"""What a process shows on its console, and its local log file.

At the default verbosity the console (stderr) shows the lines meant for a
person (`trainer.console`: the start line, progress, checkpoints, the
summary, on process 0) and every process' warnings and errors, each tagged
`[pN]`. Everything else (the launcher's INFO lines, JAX's, and routine
warnings such as Orbax's "Skipping merge of OCDBT checkpoints" at every
save) goes to `<log dir>/process_N.log` only; the INFO lines of `_QUIET`
libraries go nowhere. `--verbosity=1` puts every line on the console and in
the file, in absl's format.

The filtering happens in the process, so a host started by SLURM,
Kubernetes or a TPU pod's ssh shows the same console as the simulation.
"""

from __future__ import annotations

import logging as std_logging
import os
from logging.handlers import MemoryHandler

from absl import logging

from trainer import console

# Libraries whose INFO lines are internals that would flood even the log
# file: Orbax (dozens per save), and fsspec / gcsfs on gs:// (one per object
# read). Their warnings stay; --verbosity=1 keeps everything.
_QUIET = ("/orbax/", "/fsspec/", "/gcsfs/")
# Warnings that come with normal operation: to the log file only.
_ROUTINE_WARNINGS = ("Skipping merge of OCDBT checkpoints",)

# Records logged before the log file exists (while joining), for the file.
_early: MemoryHandler | None = None
_console_format: _Tagged | None = None


def _tag_lines(tag: str, text: str) -> str:
    """`tag` before every line (tracebacks included), so each line says its process."""
    if not tag:
        return text
    return "\n".join(f"{tag} {line}" for line in text.split("\n"))


class _Tagged(logging.PythonFormatter):
    """absl's format, each line tagged with the process."""

    def __init__(self, tag: str):
        super().__init__()
        self.tag = tag

    def format(self, record):
        return _tag_lines(self.tag, super().format(record))


class _Console(_Tagged):
    """Console lines as `[pN] message`; other records in absl's format."""

    def format(self, record):
        if record.name == console.LOGGER:
            return _tag_lines(self.tag, record.getMessage())
        return super().format(record)


def routine(record: std_logging.LogRecord) -> bool:
    """A warning that comes with normal operation (the log file keeps it)."""
    return record.levelno < std_logging.ERROR and any(
        text in record.getMessage() for text in _ROUTINE_WARNINGS
    )


class _ConsoleFilter(std_logging.Filter):
    """Passes console lines, and warnings and errors that are not routine."""

    def __init__(self, detailed: bool):
        super().__init__()
        self._detailed = detailed

    def filter(self, record):
        shown = (
            self._detailed
            or record.name == console.LOGGER
            or (record.levelno >= std_logging.WARNING and not routine(record))
        )
        if shown:
            console.clear_bar()  # The line takes the bar's place; the next step redraws it.
        return shown


class _FileFilter(std_logging.Filter):
    """Drops INFO lines of the `_QUIET` libraries (unless --verbosity=1)."""

    def filter(self, record):
        return record.levelno > std_logging.INFO or not any(
            name in record.pathname for name in _QUIET
        )


def _detailed() -> bool:
    return logging.get_verbosity() >= 1


def early(process_id: int | None) -> None:
    """Sets the console up before the process joins the job (its index may be unknown).

    Lines logged until `setup` are kept for the log file.
    """
    global _early, _console_format
    if _console_format is not None:  # Set up already.
        return
    handler = logging.get_absl_handler()
    formatter = _Tagged if _detailed() else _Console
    _console_format = formatter("" if process_id is None else f"[p{process_id}]")
    handler.setFormatter(_console_format)
    handler.addFilter(_ConsoleFilter(_detailed()))
    if _early is None:
        _early = MemoryHandler(capacity=10_000, flushLevel=std_logging.CRITICAL + 1, target=None)
        std_logging.getLogger().addHandler(_early)


def setup(process_index: int, log_dir: str) -> str:
    """Tags the console with `[pN]` and writes every line to `log_dir/process_N.log`.

    `log_dir` is a local folder (created if needed): a log file grows line by
    line, which object stores cannot do, so a gs:// run logs locally (see
    `launcher.workdir.log_dir`). Calls `early` first if it was not called.

    Returns:
        The log file's path.
    """
    global _early
    tag = f"[p{process_index}]"
    if _console_format is None:
        early(process_index)
    _console_format.tag = tag
    os.makedirs(log_dir, exist_ok=True)
    path = os.path.join(log_dir, f"process_{process_index}.log")
    file_handler = std_logging.FileHandler(path)
    file_handler.setFormatter(_Tagged(tag))
    if not _detailed():
        file_handler.addFilter(_FileFilter())
    root = std_logging.getLogger()
    root.addHandler(file_handler)  # Every logger's records: absl's, JAX's, the console's.
    if _early is not None:
        root.removeHandler(_early)
        _early.setTarget(file_handler)
        _early.flush()
        _early.close()
        _early = None
    return path
