"""Joining the job: bounded in time, and a SIGTERM while waiting exits 75.

`jax.distributed.initialize` blocks in C++ until every process has joined.
Two things must still work while it blocks: a deadline (a coordinator whose
peer died before joining was seen waiting past JAX's own
`initialization_timeout`, holding the GIL), and a SIGTERM (a preemption
before the first step loses nothing, so the process leaves with
`EXIT_PREEMPTED` at once instead of being killed by the signal).
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import threading

import jax
from absl import logging

from launcher.exits import EXIT_PREEMPTED, exit_now


def _preempted_while_joining(signum: int) -> None:
    """Leaves with EXIT_PREEMPTED at once: nothing trained, nothing to save."""
    logging.warning(
        "signal %d while joining the job: exiting %d before any step "
        "(nothing to checkpoint); relaunch the same command",
        signum,
        EXIT_PREEMPTED,
    )
    exit_now(EXIT_PREEMPTED)


@contextlib.contextmanager
def _sigterm_exits_preempted():
    """A SIGTERM inside the block exits the process with EXIT_PREEMPTED.

    A Python signal handler would only run after the blocking C++ call
    returns. The C-level part of Python's signal handling still writes the
    signal number to the wakeup fd; a thread blocked reading it exits the
    process. On leaving, the previous handler and wakeup fd are back (JAX's
    preemption notifier must be installed after that, see `join_with_deadline`).
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # Signal handlers can only be set from the main thread.
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)  # The wakeup fd must not block the C handler.

    def watch() -> None:
        while data := os.read(read_fd, 64):
            if signal.SIGTERM in data:
                _preempted_while_joining(signal.SIGTERM)
        os.close(read_fd)

    # If the main thread is back in Python first, the handler itself runs.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: _preempted_while_joining(signum))
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    threading.Thread(target=watch, name="sigterm-while-joining", daemon=True).start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous_fd)
        signal.signal(signal.SIGTERM, previous)
        os.close(write_fd)  # The watcher reads EOF and ends.


def join_with_deadline(seconds: int, **kwargs) -> None:
    """jax.distributed.initialize, but the process exits 1 if joining takes longer.

    faulthandler's watchdog runs in C, prints where the process was stuck,
    and exits regardless of the GIL.

    A SIGTERM while joining exits EXIT_PREEMPTED at once. JAX's preemption
    service (its own C-level SIGTERM handler, see trainer/preemption.py) is
    started only after our handler is gone, so that restoring ours does not
    replace JAX's.
    """
    from jax._src import distributed as jax_distributed  # The preemption service's switch.

    logging.info(
        "joining %s; giving up after %ds",
        kwargs.get("coordinator_address") or "the cluster",
        seconds,
    )
    preemption_service = jax.config.jax_enable_preemption_service
    faulthandler.dump_traceback_later(seconds + 5, exit=True)
    try:
        with _sigterm_exits_preempted():
            jax.config.update("jax_enable_preemption_service", False)
            try:
                jax.distributed.initialize(**kwargs)
            finally:
                jax.config.update("jax_enable_preemption_service", preemption_service)
    finally:
        faulthandler.cancel_dump_traceback_later()
    if preemption_service:
        jax_distributed.global_state.initialize_preemption_sync_manager()
