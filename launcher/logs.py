"""absl logging tagged with the process index, plus a local log file per process."""

from __future__ import annotations

import logging as std_logging
import os

from absl import logging


class _Tagged(logging.PythonFormatter):
    def __init__(self, tag: str):
        super().__init__()
        self._tag = tag

    def format(self, record):
        return f"{self._tag} {super().format(record)}"


# Libraries whose INFO lines are internals: Orbax (several per save), and
# fsspec / gcsfs on gs:// (one per object read).
_QUIET = ("/orbax/", "/fsspec/", "/gcsfs/")


class _QuietLibraries(std_logging.Filter):
    """Drops INFO lines from the `_QUIET` libraries; warnings pass."""

    def filter(self, record):
        return record.levelno > std_logging.INFO or not any(
            name in record.pathname for name in _QUIET
        )


def setup(process_index: int, log_dir: str) -> str:
    """Prefixes every line with `[pN]` and mirrors it to `log_dir/process_N.log`.

    `log_dir` is a local folder (created if needed): a log file grows line by
    line, which object stores cannot do, so a gs:// run logs locally (see
    `launcher.workdir.log_dir`). Orbax's INFO lines are kept out unless
    --verbosity=1 or more.

    Returns:
        The log file's path.
    """
    formatter = _Tagged(f"[p{process_index}]")
    logging.get_absl_handler().setFormatter(formatter)
    if logging.get_verbosity() < 1:
        logging.get_absl_handler().addFilter(_QuietLibraries())
    os.makedirs(log_dir, exist_ok=True)
    path = os.path.join(log_dir, f"process_{process_index}.log")
    file_handler = std_logging.FileHandler(path)
    file_handler.setFormatter(formatter)
    file_handler.addFilter(_QuietLibraries())
    logging.get_absl_logger().addHandler(file_handler)
    return path
