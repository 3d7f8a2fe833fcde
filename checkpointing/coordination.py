"""Agreement between processes without device collectives.

Everything here goes through the JAX coordination service (barriers and the
key-value store), never through device collectives, so it is safe from the
background writer thread while the training thread runs steps, and every wait
has a timeout. With one process every call is a no-op.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
from absl import flags, logging
from jax._src import distributed
from orbax.checkpoint import multihost as ocp_multihost

from checkpointing import layout
from checkpointing.layout import BARRIER_PREFIX

# Orbax's own switch from device-collective barriers to coordination-service
# barriers (which take a timeout). Defined when orbax.checkpoint is imported.
_ORBAX_BARRIER_FLAG = "experimental_orbax_use_distributed_barrier"

# Same program on every process: the n-th callback built is the n-th on all.
_instances = itertools.count()
_flag_lock = threading.Lock()


class CheckpointWriteError(RuntimeError):
    """A checkpoint write failed (raised in the training thread)."""


class PeerFailedError(CheckpointWriteError):
    """A checkpoint write failed on another process."""


def next_instance() -> int:
    """A number for a new callback or `restore_latest` call; equal on all processes.

    Equal because every process runs the same program: each must build its
    callbacks and call `restore_latest` in the same order.
    """
    return next(_instances)


def _client():
    return distributed.global_state.client


def enable_orbax_coordination_barriers() -> None:
    """Makes Orbax's barriers use the coordination service, with timeouts.

    By default Orbax's `sync_global_processes` is `sync_global_devices`, a
    device collective without timeout. Run from the background writer while
    the training thread runs steps, two collectives could interleave in a
    different order on different processes and deadlock. Orbax's flag
    `--experimental_orbax_use_distributed_barrier` switches every such barrier
    to `client.wait_at_barrier(key, timeout)`. This sets it (once per process,
    logged), also when absl flags have not been parsed (tests, notebooks).
    """
    with _flag_lock:
        flag = flags.FLAGS[_ORBAX_BARRIER_FLAG]
        if flag.value and (flag.present or flags.FLAGS.is_parsed()):
            return
        flag.value = True
        # Readable before absl parses argv; Orbax reads it on every barrier.
        flag.present = 1
    logging.info("checkpointing: set --%s (Orbax barriers with timeouts)", _ORBAX_BARRIER_FLAG)


@dataclasses.dataclass(frozen=True)
class Coordinator:
    """Barriers, failure notices and decisions of one callback's run.

    Attributes:
        process_index: This process.
        process_count: All processes.
        namespace: Key-value prefix unique to this callback and `fit` call
            (or `restore_latest` call).
        timeout_s: Timeout of every barrier and wait.
    """

    process_index: int
    process_count: int
    namespace: str
    timeout_s: float

    @classmethod
    def create(cls, directory: str, instance: int, run: int, timeout_s: float) -> Coordinator:
        """A coordinator for one `fit` of one callback on `directory`.

        Args:
            directory: The checkpoint root (hashed into the namespace).
            instance: From `next_instance()`, taken when the callback is built
                (or when `restore_latest` starts).
            run: Counts the `fit` calls of this callback.
            timeout_s: Timeout of every barrier and wait.
        """
        digest = hashlib.sha1(str(directory).encode()).hexdigest()[:10]
        namespace = f"{BARRIER_PREFIX}/{digest}/{instance}/{run}"
        return cls(jax.process_index(), jax.process_count(), namespace, timeout_s)

    @property
    def multiprocess(self) -> bool:
        return self.process_count > 1 and _client() is not None

    def barrier(self, name: str, step: int) -> None:
        """Waits for all processes at `<prefix>_<name>.<step>`.

        Raises:
            jax.errors.JaxRuntimeError: If a process does not arrive within the
                timeout.
        """
        if not self.multiprocess:
            return
        ocp_multihost.sync_global_processes(
            ocp_multihost.unique_barrier_key(name, prefix=BARRIER_PREFIX, suffix=str(step)),
            timeout=max(1, int(round(self.timeout_s))),
            # Explicit processes: always the coordination service, never devices.
            processes=set(range(self.process_count)),
        )

    def publish_failure(self, step: int, error: BaseException) -> None:
        """Tells the other processes that this process failed to write `step`."""
        if not self.multiprocess:
            return
        message = f"process {self.process_index} failed to write step {step}: {error!r}"
        try:
            _client().key_value_set(f"{self.namespace}/failed/{self.process_index}", message)
        except jax.errors.JaxRuntimeError as e:  # The coordinator may be gone.
            logging.error("checkpointing: could not publish the failure (%s): %s", e, message)

    def peer_failures(self) -> list[str]:
        """Failure notices of other processes (one RPC; empty if none)."""
        if not self.multiprocess:
            return []
        mine = f"{self.namespace}/failed/{self.process_index}"
        entries = _client().key_value_dir_get(f"{self.namespace}/failed/")
        return [message for key, message in entries if key != mine]

    def raise_if_peer_failed(self) -> None:
        """Raises PeerFailedError if another process published a failure."""
        failures = self.peer_failures()
        if failures:
            raise PeerFailedError("; ".join(sorted(failures)))

    def agree(self, name: str, step: int, value: bool) -> bool:
        """Process 0's decision `value`, on every process.

        Raises:
            PeerFailedError: If another process failed while this one waited.
            TimeoutError: If process 0 did not decide within the timeout.
        """
        return self.share(name, step, "1" if value else "0") == "1"

    def share(self, name: str, step: int, value: str) -> str:
        """Process 0's `value`, on every process (key-value store, timeout).

        Process 0 makes one call; every other process one wait and one
        increment, and the last reader deletes the keys, so that a share per
        save does not accumulate in the coordination service.

        Args:
            name: What is shared (part of the key).
            step: The global step (part of the key).
            value: This process' value; only process 0's counts.

        Returns:
            Process 0's value.

        Raises:
            PeerFailedError: If another process failed while this one waited.
            TimeoutError: If process 0 did not share within the timeout.
        """
        if not self.multiprocess:
            return value
        prefix = f"{self.namespace}/{name}/{step}"
        if self.process_index == 0:
            _client().key_value_set(f"{prefix}/value", value)
            return value
        shared = self._wait_for(
            f"{prefix}/value", f"process 0 did not share {name} for step {step}"
        )
        if _client().key_value_increment(f"{prefix}/read", 1) == self.process_count - 1:
            _client().key_value_delete(f"{prefix}/")
        return shared

    def by_process_0(self, name: str, compute: Callable[[], Any], what: str) -> Any:
        """`compute()` run on process 0 alone, its JSON-able result on every process.

        One share; shared even when `compute` fails, so that no process waits
        for it: the error is raised on every process (process 0's own, an
        OSError naming it elsewhere). Processes then act on one reading of
        the file system, never on readings that differ (a file system that
        caches directory entries per host, such as NFS, can show a step to
        one host and not yet to another).

        Args:
            name: What is decided (part of the key; once per coordinator).
            compute: Runs on process 0 only.
            what: For the error message ("list the steps of DIR").
        """
        value, failure = None, None
        if self.process_index == 0:
            try:
                value = compute()
            except Exception as e:  # noqa: BLE001 - raised below, once shared.
                failure = e
        error = None if failure is None else repr(failure)
        shared = json.loads(self.share(name, 0, json.dumps({"value": value, "error": error})))
        if failure is not None:
            raise failure
        if shared["error"] is not None:
            raise OSError(f"process 0 could not {what}: {shared['error']}")
        return shared["value"]

    def committed_steps(self, directory) -> list[int]:
        """Process 0's listing of the committed steps of `directory`, on every process."""
        return self.by_process_0(
            "committed_steps",
            lambda: [found.step for found in layout.committed_steps(directory)],
            f"list the steps of {directory}",
        )

    def gather(self, name: str, step: int, value: str) -> list[str]:
        """Every process' `value`, in process order, on process 0 (others get []).

        Each other process makes one set and one increment (the last one to
        arrive also sets a "complete" key); process 0 waits for that key,
        reads every value with one directory read and deletes the keys: O(1)
        calls on every process, whatever the process count.

        Args:
            name: What is gathered (part of the key).
            step: The global step (part of the key).
            value: This process' value.

        Raises:
            PeerFailedError: If another process failed while process 0 waited.
            TimeoutError: If a process did not send its value within the
                timeout (process 0).
        """
        if not self.multiprocess:
            return [value]
        prefix = f"{self.namespace}/{name}/{step}"
        if self.process_index != 0:
            _client().key_value_set(f"{prefix}/values/{self.process_index}", value)
            if _client().key_value_increment(f"{prefix}/count", 1) == self.process_count - 1:
                _client().key_value_set(f"{prefix}/complete", "1")
            return []
        self._wait_for(f"{prefix}/complete", f"not every process sent {name} for step {step}")
        entries = dict(_client().key_value_dir_get(f"{prefix}/values/"))
        _client().key_value_delete(f"{prefix}/")
        return [value] + [entries[f"{prefix}/values/{i}"] for i in range(1, self.process_count)]

    def _wait_for(self, key: str, what: str, deadline: float | None = None) -> str:
        """The value of `key` once set; raises peers' failures while waiting."""
        if deadline is None:
            deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                return _client().blocking_key_value_get(key, 1000)
            except jax.errors.JaxRuntimeError as e:
                if "DEADLINE_EXCEEDED" not in str(e) and "NOT_FOUND" not in str(e):
                    raise
            self.raise_if_peer_failed()
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{what} within {self.timeout_s}s. Received: barrier_timeout_s={self.timeout_s}"
                )
