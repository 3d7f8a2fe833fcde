"""Distributed start-up: CPU simulation settings and jax.distributed.initialize."""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass

import jax
from absl import logging

from checkpointing.metadata import flatten_with_paths

# The documented "preempted; relaunch the same command" code (trainer.preemption.EXIT_PREEMPTED,
# not imported: that module imports Keras, which must wait for the JAX configuration).
EXIT_PREEMPTED = 75


class UsageError(ValueError):
    """Command-line flags that cannot work together; exit code 2."""


@dataclass(frozen=True)
class DistributedFlags:
    coordinator_address: str | None
    num_processes: int | None
    process_id: int | None
    num_cpu_devices: int | None
    # A peer silent this long is declared dead and every process stops.
    heartbeat_timeout_s: int = 60
    # How long to wait for every process to join at start-up.
    init_timeout_s: int = 300

    def check(self) -> None:
        """Raises UsageError for inconsistent flags, naming the received values."""
        given = [self.coordinator_address, self.num_processes, self.process_id]
        if any(v is not None for v in given) and not all(v is not None for v in given):
            raise UsageError(
                "--coordinator_address, --num_processes and --process_id go together. Received: "
                f"coordinator_address={self.coordinator_address!r}, num_processes={self.num_processes}, "
                f"process_id={self.process_id}"
            )
        if self.num_processes is not None and self.num_processes < 1:
            raise UsageError(
                f"--num_processes must be >= 1. Received: num_processes={self.num_processes}"
            )
        if self.process_id is not None and not 0 <= self.process_id < (self.num_processes or 0):
            raise UsageError(
                f"--process_id must be in [0, num_processes={self.num_processes}). "
                f"Received: process_id={self.process_id}"
            )
        if self.init_timeout_s < 1:
            raise UsageError(
                f"--init_timeout_s must be >= 1. Received: init_timeout_s={self.init_timeout_s}"
            )
        if self.heartbeat_timeout_s < 1:
            raise UsageError(
                f"--heartbeat_timeout_s must be >= 1. Received: heartbeat_timeout_s={self.heartbeat_timeout_s}"
            )
        if self.num_cpu_devices is not None and self.num_cpu_devices < 1:
            raise UsageError(
                f"--num_cpu_devices must be >= 1. Received: num_cpu_devices={self.num_cpu_devices}"
            )


def _cluster_detected() -> bool:
    """Whether JAX recognises a cluster (Cloud TPU, SLURM, Open MPI, k8s...)."""
    from jax._src import clusters  # JAX's own auto-detection list.

    return any(env.is_env_present() for env in clusters.ClusterEnv._cluster_types)


def _preempted_while_joining(signum: int) -> None:
    """Leaves with EXIT_PREEMPTED at once: nothing trained, nothing to save."""
    logging.warning(
        "signal %d while joining the job: exiting %d before any step "
        "(nothing to checkpoint); relaunch the same command",
        signum,
        EXIT_PREEMPTED,
    )
    for handler in logging.get_absl_logger().handlers + [logging.get_absl_handler()]:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_PREEMPTED)


@contextlib.contextmanager
def _sigterm_exits_preempted():
    """A SIGTERM inside the block exits the process with EXIT_PREEMPTED.

    `jax.distributed.initialize` blocks in C++ until every process has
    joined, so a Python signal handler would only run after it returns. The
    C-level part of Python's signal handling still writes the signal number
    to the wakeup fd; a thread blocked reading it exits the process.
    On leaving, the previous handler and wakeup fd are back (JAX's
    preemption notifier must be installed after that, see `_join_with_deadline`).
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


def _join_with_deadline(seconds: int, **kwargs) -> None:
    """jax.distributed.initialize, but the process exits 1 if joining takes longer.

    A coordinator whose peer died before joining was seen waiting past JAX's
    own `initialization_timeout`, holding the GIL; faulthandler's watchdog
    runs in C, prints where the process was stuck, and exits regardless.

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


def initialize(flags: DistributedFlags) -> None:
    """Configures JAX and joins the job; must run before JAX touches a device."""
    if flags.num_cpu_devices is not None:
        # Local simulation: D CPU devices per process, gloo for cross-process collectives.
        jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_num_cpu_devices", flags.num_cpu_devices)
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        logging.info(
            "CPU simulation: %d devices per process, gloo collectives", flags.num_cpu_devices
        )
    timeouts = dict(
        initialization_timeout=flags.init_timeout_s,
        heartbeat_timeout_seconds=flags.heartbeat_timeout_s,
        # Bounds the wait for dead peers at exit too.
        shutdown_timeout_seconds=flags.heartbeat_timeout_s,
    )
    if flags.coordinator_address is not None:
        if flags.num_processes > 1:
            _join_with_deadline(
                flags.init_timeout_s,
                coordinator_address=flags.coordinator_address,
                num_processes=flags.num_processes,
                process_id=flags.process_id,
                **timeouts,
            )
    elif _cluster_detected():
        # Cloud TPU pods and clusters JAX knows.
        _join_with_deadline(flags.init_timeout_s, **timeouts)


def topology_line() -> str:
    """One line describing this process' view of the job."""
    local = jax.local_devices()
    return (
        f"process {jax.process_index()}/{jax.process_count()}: {len(local)} local of "
        f"{jax.device_count()} {local[0].platform} devices ({local[0].device_kind})"
    )


def check_same_config(config: dict, timeout_s: int) -> None:
    """Every process publishes its resolved config and reads everyone's.

    A difference is a UsageError on every process naming the first field that
    differs, instead of a hang or a silent divergence later.
    """
    if jax.process_count() == 1:
        return
    from jax._src.distributed import global_state  # The coordination service client.

    client = global_state.client
    mine = json.dumps(config, sort_keys=True, default=str)
    client.key_value_set(f"podfit/config/{jax.process_index()}", mine)
    published = [
        client.blocking_key_value_get(f"podfit/config/{i}", timeout_s * 1000)
        for i in range(jax.process_count())
    ]
    for index, theirs in enumerate(published[1:], start=1):
        if theirs == published[0]:
            continue
        a, b = flatten_with_paths(json.loads(published[0])), flatten_with_paths(json.loads(theirs))
        path = next((k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)), "?")
        field = path.replace("/", ".")  # Config keys hold no "/".
        raise UsageError(
            f"config.{field} differs between processes: process 0 has {a.get(path)!r}. "
            f"Received: process {index} has {field}={b.get(path)!r}"
        )


def leave_together(name: str, timeout_s: float = 10.0) -> None:
    """Waits (bounded) until every process got here, before they all exit.

    For an error every process finds by itself (bad input found after
    start-up): process 0 runs the coordination service, and a peer still
    connected when it exits aborts (SIGABRT) instead of exiting with its own
    code. So all processes meet at a barrier first, and process 0 leaves
    last. A peer that never arrives costs `timeout_s`, then everyone leaves.
    """
    if jax.process_count() == 1:
        return
    from jax._src.distributed import global_state  # The coordination service client.

    try:
        global_state.client.wait_at_barrier(f"podfit/leave/{name}", int(timeout_s * 1000))
    except Exception as e:  # noqa: BLE001 - leaving anyway; the exit code says why.
        logging.warning("not every process reached %s within %.0fs: %s", name, timeout_s, e)
    if jax.process_index() == 0:
        time.sleep(1.0)  # Let the peers exit before the service they are connected to.
