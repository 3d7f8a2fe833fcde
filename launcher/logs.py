"""absl logging tagged with the process index, plus a log file per process."""

from __future__ import annotations

import logging as std_logging
from pathlib import Path

from absl import logging


class _Tagged(logging.PythonFormatter):
    def __init__(self, tag: str):
        super().__init__()
        self._tag = tag

    def format(self, record):
        return f"{self._tag} {super().format(record)}"


class _QuietLibraries(std_logging.Filter):
    """Drops INFO lines from Orbax internals (several per save); warnings pass."""

    def filter(self, record):
        return record.levelno > std_logging.INFO or "/orbax/" not in record.pathname


def setup(process_index: int, workdir: Path) -> Path:
    """Prefixes every line with `[pN]` and mirrors it to workdir/logs/process_N.log.

    Orbax's INFO lines are kept out unless --verbosity=1 or more.
    """
    formatter = _Tagged(f"[p{process_index}]")
    logging.get_absl_handler().setFormatter(formatter)
    if logging.get_verbosity() < 1:
        logging.get_absl_handler().addFilter(_QuietLibraries())
    log_dir = workdir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / f"process_{process_index}.log"
    file_handler = std_logging.FileHandler(path)
    file_handler.setFormatter(formatter)
    file_handler.addFilter(_QuietLibraries())
    logging.get_absl_logger().addHandler(file_handler)
    return path
