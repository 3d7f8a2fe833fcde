"""Transient read errors: an `OSError` is tried again, with backoff, then raised.

Object stores and network file systems fail reads now and then (a timeout,
a throttled request, a connection reset). Such a failure says nothing about
the bytes stored, so a step is never judged damaged because it could not be
read: the read is tried again and, if it keeps failing, the error is raised.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from absl import logging
from etils import epath

# A read that fails with an OSError is tried this many times in all, the
# first retry after READ_BACKOFF_S seconds, each next one after twice as long.
READ_TRIES = 4
READ_BACKOFF_S = 0.5

T = TypeVar("T")


def retried(what: epath.PathLike, read: Callable[[], T]) -> T:
    """`read()`, tried again with backoff after an `OSError` (a transient read error).

    A missing file (`FileNotFoundError`) is not retried: it is an answer.

    Args:
        what: What is read (for the log).
        read: Reads it.

    Raises:
        OSError: The last error, once `READ_TRIES` tries failed.
    """
    delay = READ_BACKOFF_S
    for attempt in range(1, READ_TRIES + 1):
        try:
            return read()
        except FileNotFoundError:
            raise
        except OSError as e:
            if attempt == READ_TRIES:
                raise
            logging.warning(
                "checkpointing: reading %s failed (try %d of %d); again in %.1fs: %r",
                what,
                attempt,
                READ_TRIES,
                delay,
                e,
            )
            time.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")
