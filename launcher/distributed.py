"""Which job this process belongs to, and joining it before JAX touches a device.

Local multi-process simulation gives --coordinator_address, --num_processes,
--process_id and --num_cpu_devices (scripts/simulate.py sets them). With none
of them, Cloud TPU pods and clusters JAX knows are detected; otherwise one
process runs alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jax
from absl import flags, logging

from launcher.joining import join_with_deadline
from launcher.usage import UsageError

_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 (local runs)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job (local runs).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process' index (local runs).")
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    "heartbeat_timeout_s", 60, "Seconds without a heartbeat after which a peer counts as dead."
)
_INIT_TIMEOUT = flags.DEFINE_integer(
    "init_timeout_s", 300, "Seconds to wait at start-up for every process to join."
)
_NUM_CPU_DEVICES = flags.DEFINE_integer(
    "num_cpu_devices", None, "Simulate this many CPU devices per process."
)


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

    @classmethod
    def from_flags(cls) -> DistributedFlags:
        """The values of this module's flags (after absl parsed them)."""
        return cls(
            _COORDINATOR.value,
            _NUM_PROCESSES.value,
            _PROCESS_ID.value,
            _NUM_CPU_DEVICES.value,
            _HEARTBEAT_TIMEOUT.value,
            _INIT_TIMEOUT.value,
        )

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
        for name in ("init_timeout_s", "heartbeat_timeout_s", "num_cpu_devices"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"--{name} must be >= 1. Received: {name}={value}")


def _cluster_detected() -> bool:
    """Whether JAX recognises a cluster (Cloud TPU, SLURM, Open MPI, k8s...)."""
    from jax._src import clusters  # JAX's own auto-detection list.

    return any(env.is_env_present() for env in clusters.ClusterEnv._cluster_types)


def _simulate_cpu_devices(count: int) -> None:
    """Local simulation: `count` CPU devices per process, gloo for cross-process collectives."""
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", count)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    logging.info("CPU simulation: %d devices per process, gloo collectives", count)


def initialize(flags: DistributedFlags) -> None:
    """Configures JAX and joins the job; must run before JAX touches a device."""
    if flags.num_cpu_devices is not None:
        _simulate_cpu_devices(flags.num_cpu_devices)
    timeouts = dict(
        initialization_timeout=flags.init_timeout_s,
        heartbeat_timeout_seconds=flags.heartbeat_timeout_s,
        # Bounds the wait for dead peers at exit too.
        shutdown_timeout_seconds=flags.heartbeat_timeout_s,
    )
    if flags.coordinator_address is not None:
        if flags.num_processes > 1:
            join_with_deadline(
                flags.init_timeout_s,
                coordinator_address=flags.coordinator_address,
                num_processes=flags.num_processes,
                process_id=flags.process_id,
                **timeouts,
            )
    elif _cluster_detected():
        # Cloud TPU pods and clusters JAX knows.
        join_with_deadline(flags.init_timeout_s, **timeouts)


def topology_line() -> str:
    """One line describing this process' view of the job."""
    local = jax.local_devices()
    return (
        f"process {jax.process_index()}/{jax.process_count()}: {len(local)} local of "
        f"{jax.device_count()} {local[0].platform} devices ({local[0].device_kind})"
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
