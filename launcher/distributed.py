"""Which job this process belongs to, and joining it before JAX touches a device.

Local multi-process simulation gives --coordinator_address, --num_processes,
--process_id and --num_cpu_devices (scripts/simulate.py sets them). With none
of them, Cloud TPU pods and clusters JAX knows are detected; otherwise one
process runs alone. --local_device_ids (or JAX_LOCAL_DEVICE_IDS) restricts a
process to some of its host's GPUs: one process per GPU.

A coordinator address on loopback (localhost, 127.x, ::1) binds the
coordination service to loopback too; JAX's default binds every interface.
"""

from __future__ import annotations

import ipaddress
import os
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
_LOCAL_DEVICE_IDS = flags.DEFINE_string(
    "local_device_ids",
    None,
    "Comma-separated ids of this host's GPUs this process uses, e.g. 0 or 0,1 "
    "(default: JAX_LOCAL_DEVICE_IDS, else all of them, or what the cluster says).",
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
    # --local_device_ids (else JAX_LOCAL_DEVICE_IDS) as given; see `device_ids()`.
    local_device_ids: str | None = None

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
            local_device_ids_text(_LOCAL_DEVICE_IDS.value),
        )

    def device_ids(self) -> tuple[int, ...] | None:
        """--local_device_ids as ints (None: not given); raises UsageError if malformed."""
        if self.local_device_ids is None:
            return None
        parts = [p.strip() for p in self.local_device_ids.split(",")]
        if not all(p.isdigit() for p in parts) or len(set(parts)) != len(parts):
            raise UsageError(
                "--local_device_ids (or JAX_LOCAL_DEVICE_IDS) expects distinct comma-separated device ids >= 0, e.g. 0,1. "
                f"Received: local_device_ids={self.local_device_ids!r}"
            )
        return tuple(int(p) for p in parts)

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
        self.device_ids()


def local_device_ids_text(flag_value: str | None) -> str | None:
    """--local_device_ids, else JAX_LOCAL_DEVICE_IDS (JAX reads it only inside initialize)."""
    if flag_value is not None:
        return flag_value
    return os.environ.get("JAX_LOCAL_DEVICE_IDS") or None


def loopback_bind_address(coordinator_address: str | None) -> str | None:
    """Where the coordination service should listen: loopback for a loopback address.

    Returns None (JAX's default, every interface) for any other address, and
    when JAX_COORDINATOR_BIND_ADDRESS already says where.
    """
    if not coordinator_address or os.environ.get("JAX_COORDINATOR_BIND_ADDRESS"):
        return None
    host, _, port = coordinator_address.rpartition(":")
    host = host.strip("[]")
    if host == "localhost":
        return f"127.0.0.1:{port}"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None  # A host name: the cluster's network, so every interface.
    if not ip.is_loopback:
        return None
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _restrict_local_devices(ids: tuple[int, ...]) -> None:
    """What jax.distributed.initialize does with local_device_ids, for a process alone."""
    visible = ",".join(map(str, ids))
    jax.config.update("jax_cuda_visible_devices", visible)
    jax.config.update("jax_rocm_visible_devices", visible)


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
    ids = flags.device_ids()
    if ids is not None:
        timeouts["local_device_ids"] = list(ids)
    if flags.coordinator_address is not None and flags.num_processes > 1:
        bind = loopback_bind_address(flags.coordinator_address)
        if bind is not None:
            timeouts["coordinator_bind_address"] = bind
            logging.info("coordination service on loopback only: %s", bind)
        join_with_deadline(
            flags.init_timeout_s,
            coordinator_address=flags.coordinator_address,
            num_processes=flags.num_processes,
            process_id=flags.process_id,
            **timeouts,
        )
    elif flags.coordinator_address is None and _cluster_detected():
        # Cloud TPU pods and clusters JAX knows; explicit local_device_ids win
        # over the one-GPU-per-task default JAX derives from SLURM or Open MPI.
        join_with_deadline(flags.init_timeout_s, **timeouts)
    elif ids is not None:
        _restrict_local_devices(ids)


def topology_line(local_device_ids: tuple[int, ...] | None = None) -> str:
    """One line describing this process' view of the job (and the GPUs it was given)."""
    local = jax.local_devices()
    restricted = "" if local_device_ids is None else f", local device ids {local_device_ids}"
    return (
        f"process {jax.process_index()}/{jax.process_count()}: {len(local)} local of "
        f"{jax.device_count()} {local[0].platform} devices ({local[0].device_kind}){restricted}"
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
