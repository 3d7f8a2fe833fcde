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

import jax

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


def check_same_config(config: dict, timeout_s: float) -> None:
    """Raises UsageError on every process if any process' config differs from process 0's.

    Args:
      config: This process' resolved config, as a dict.
      timeout_s: Timeout of every wait (a peer that never publishes).

    Raises:
      UsageError: Naming the first field that differs (the lowest differing
        process' line, the same on every process).
    """
    from checkpointing.coordination import Coordinator, _client  # noqa: PLC0415

    index, count = jax.process_index(), jax.process_count()
    if count == 1:
        return
    coordinator = Coordinator(index, count, _NAMESPACE, timeout_s)
    mine = json.dumps(config, sort_keys=True, default=str)
    digest = hashlib.sha256(mine.encode()).hexdigest()
    if index == 0:
        coordinator.share("config", 0, mine)  # Read only by a process that differs.
    if coordinator.share("sha256", 0, digest) != digest:
        theirs = json.loads(coordinator.share("config", 0, mine))
        line = _first_difference(json.loads(mine), theirs, index)
        _client().key_value_set(f"{_NAMESPACE}/mismatch/{index:08d}", line)
    coordinator.barrier("config_checked", 0)
    mismatches = sorted(_client().key_value_dir_get(f"{_NAMESPACE}/mismatch/"))
    if mismatches:
        raise UsageError(mismatches[0][1])
