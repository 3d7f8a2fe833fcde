"""How the launcher process ends: the documented exit codes, and leaving at once.

Importable before Keras and before the JAX configuration (no jax import), so
that a SIGTERM while joining the job can exit with `EXIT_PREEMPTED` too.
"""

from __future__ import annotations

import os
import sys

from absl import logging

EXIT_FAILURE = 1
# Bad flags or config, or a workdir holding another model's checkpoints.
EXIT_USAGE = 2
# Preempted, checkpoint saved (or nothing trained yet): relaunch the same command to resume.
EXIT_PREEMPTED = 75


def exit_now(code: int) -> None:
    """Flushes the logs and leaves without JAX's exit-time shutdown barrier.

    After a failure (or a SIGTERM while joining) a peer may be dead or not
    there yet; waiting for it at exit would only delay the exit that tells
    the scheduler (or scripts/simulate.py) to stop the others. Uncommitted
    checkpoint writes stay invisible.
    """
    for handler in logging.get_absl_logger().handlers + [logging.get_absl_handler()]:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def usage_exit(message: str) -> None:
    """One line on stderr, then exit code 2."""
    print(f"launcher: {message}", file=sys.stderr)
    sys.exit(EXIT_USAGE)
