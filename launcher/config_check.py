"""Every process runs the same config: compared by hash, in O(1) rounds per process.

Process 0 publishes its config and the config's SHA-256 (coordination
service key-value store). Each other process reads the hash (one call) and,
only if its own differs, process 0's config, to name the first field that
differs; it publishes that line under a mismatch key. After one barrier,
every process reads the mismatch keys (one call), so that all of them exit 2
with the same line instead of some training and the others exiting.
"""

from __future__ import annotations

import hashlib
import json

from launcher.usage import UsageError

_NAMESPACE = "podfit/config"


def _first_difference(ours: dict, theirs: dict, process_index: int) -> str:
    from checkpointing.metadata import flatten_with_paths  # noqa: PLC0415

    a, b = flatten_with_paths(theirs), flatten_with_paths(ours)
    path = next((k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)), "?")
    field = path.replace("/", ".")  # Config keys hold no "/".
    return (
        f"config.{field} differs between processes: process 0 has {a.get(path)!r}. "
        f"Received: process {process_index} has {field}={b.get(path)!r}"
    )


def check_same_config(
    config: dict, timeout_s: float, *, process_index: int, process_count: int
) -> None:
    """Raises UsageError on every process if any process' config differs from process 0's.

    Calls per process: 3 to the coordination service (4 on process 0), 2
    more on a process whose config differs; none with one process.

    Args:
      config: This process' resolved config, as a dict.
      timeout_s: Timeout of every wait (a peer that never publishes).
      process_index: This process.
      process_count: All processes.

    Raises:
      UsageError: Naming the first field that differs (the lowest differing
        process' line, the same on every process).
    """
    if process_count == 1:
        return
    from jax._src.distributed import global_state  # noqa: PLC0415  (the coordination client)

    from checkpointing.coordination import Coordinator  # noqa: PLC0415

    client = global_state.client
    coordinator = Coordinator(process_index, process_count, _NAMESPACE, timeout_s)
    mine = json.dumps(config, sort_keys=True, default=str)
    digest = hashlib.sha256(mine.encode()).hexdigest()
    if process_index == 0:
        coordinator.share("config", 0, mine)  # Read only by a process that differs.
    if coordinator.share("sha256", 0, digest) != digest:
        theirs = json.loads(coordinator.share("config", 0, mine))
        line = _first_difference(json.loads(mine), theirs, process_index)
        client.key_value_set(f"{_NAMESPACE}/mismatch/{process_index:08d}", line)
    client.wait_at_barrier(f"{_NAMESPACE}/checked", int(timeout_s * 1000))
    mismatches = sorted(client.key_value_dir_get(f"{_NAMESPACE}/mismatch/"))
    if mismatches:
        raise UsageError(mismatches[0][1])
