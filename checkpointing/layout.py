"""The on-disk layout of a checkpoint directory, and how Orbax is configured.

```
DIR/
  <global step>/                 committed steps only (Orbax renames the
    _CHECKPOINT_METADATA           `<step>.orbax-checkpoint-tmp*` directory
    commit_success.txt             into place when every process has written)
    pytree/        model.get_state_tree(): trainable, non-trainable,
                   optimizer and metrics variables (OCDBT, sharded)
    model_config/  {"config": <Keras model JSON>}   (not with save_weights_only)
    podfit/        data.json: the StepRecord (progress, data position, best,
                   metadata, topology, versions, metrics)
    metrics/       the scalar logs, read by Orbax's BestN retention policy
  <step>.damaged-<n>/            a committed step found damaged, moved aside by
                                 `restore_latest` (never deleted, never listed)
```

`pytree` and `model_config` are exactly what `keras.callbacks.OrbaxCheckpoint`
writes, so `keras.saving.load_model(DIR)` and `model.load_weights(DIR)` read
our directories unchanged.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

from etils import epath
from orbax.checkpoint import v1 as ocp

from checkpointing.metadata import StepRecord

PYTREE = "pytree"
MODEL_CONFIG = "model_config"
RECORD = "podfit"

# Prefix of every Orbax barrier key this package causes; our own barriers
# append ".<step>" (see coordination.py).
BARRIER_PREFIX = "podfit_ckpt"

# Written by Orbax into the temporary directory right before it is committed.
_ORBAX_STEP_METADATA = "_CHECKPOINT_METADATA"

# Orbax's per-process OCDBT directories inside a checkpointable
# (`pytree/ocdbt.process_3/`): each process writes its array shards there.
_PROCESS_DIR = re.compile(r"ocdbt\.process_(\d+)")


def process_dir_owner(name: str) -> int | None:
    """The process an `ocdbt.process_<i>` directory belongs to; None for other names."""
    match = _PROCESS_DIR.fullmatch(name)
    return None if match is None else int(match.group(1))


def writer_of(relative: str) -> int:
    """The process that wrote a file of a step, from its path relative to the step.

    `i` for files under an `ocdbt.process_<i>` directory (that process' array
    shards); 0 for every other file (the metadata process 0 writes).
    """
    for part in relative.split("/"):
        owner = process_dir_owner(part)
        if owner is not None:
            return owner
    return 0


def orbax_context(
    *,
    barrier_timeout_s: float = 300.0,
    barrier_prefix: str = BARRIER_PREFIX,
    compression: bool = False,
) -> ocp.Context:
    """The Orbax context every save and load of this package runs under.

    Args:
        barrier_timeout_s: Timeout of Orbax's background barriers (commit).
        barrier_prefix: Prefix of Orbax's barrier keys; one per checkpointer,
            so that two checkpointers' barriers never meet.
        compression: Whether arrays are written zstd-compressed (Orbax's
            default). Off by default: trained float weights and optimizer
            moments shrink by under 10% while compression costs CPU on the
            write and decompression on every restore (see
            docs/benchmarks.md). Readers need no setting: each array's codecs
            are stored with it, so compressed and uncompressed steps load alike.

    Returns:
        An `ocp.Context` that stores the `podfit` record as a plain JSON file.
    """
    registry = ocp.handlers.local_registry(include_global_registry=True)
    # The record is JSON; without this, the generic PyTree handler would win.
    registry.add(ocp.handlers.JsonHandler, checkpointable_name=RECORD)
    context = ocp.Context()
    context.checkpointables.registry = registry
    context.asynchronous.timeout_secs = max(1, int(round(barrier_timeout_s)))
    context.multiprocessing.barrier_sync_key_prefix = barrier_prefix
    context.array.saving.use_compression = compression
    return context


def no_preemption_queries(checkpointer: ocp.training.Checkpointer) -> ocp.training.Checkpointer:
    """Stops `checkpointer` from asking JAX's preemption sync point; returns it.

    Orbax's manager asks `reached_preemption_sync_point(step)` with each
    checkpoint's step, from its own threads, at every save. JAX's sync
    manager expects one caller counting steps upward (the training loop);
    a second one reporting other numbers can make the agreed step one the
    training loop has already passed, and then no process ever stops (seen
    with a SIGTERM during a save). The training loop decides preemption saves.
    """
    manager = getattr(checkpointer, "_manager", None)  # Orbax's CheckpointManager.
    if manager is not None and hasattr(manager, "reached_preemption"):
        manager.reached_preemption = lambda step: False
    return checkpointer


def root(directory: epath.PathLike) -> str:
    """`directory` as Orbax needs it: absolute for local paths, URLs (gs://) as given."""
    text = os.fspath(directory)
    return text if "://" in text else os.path.abspath(text)


def committed_steps(directory: epath.PathLike) -> list[Any]:
    """The committed steps in `directory`, ascending.

    Uncommitted (`*.orbax-checkpoint-tmp*`) directories are never listed:
    Orbax's standard name format only yields finalized steps.

    Args:
        directory: The checkpoint root.

    Returns:
        Orbax `CheckpointMetadata[None]` values (`.step`, `.path`,
        `.commit_timestamp_nsecs`); empty if the directory does not exist.
    """
    directory = epath.Path(directory)
    if not directory.exists():
        return []
    found = ocp.path.step.standard_name_format().find_all(directory)
    # On local file systems Orbax trusts the name alone; a step directory
    # without the metadata Orbax writes just before the commit (made by hand,
    # or half deleted) is not a step either.
    return sorted(
        (m for m in found if (epath.Path(m.path) / _ORBAX_STEP_METADATA).exists()),
        key=lambda m: m.step,
    )


def step_dir(directory: epath.PathLike, step: int) -> epath.Path:
    """Where `step`'s directory is once committed, by name alone (no listing)."""
    return epath.Path(directory) / ocp.path.step.standard_name_format().build_name(step)


def step_path(directory: epath.PathLike, step: int) -> epath.Path:
    """The committed directory of `step`.

    Raises:
        ValueError: If `step` is not a committed step of `directory`.
    """
    for found in committed_steps(directory):
        if found.step == step:
            return epath.Path(found.path)
    available = [m.step for m in committed_steps(directory)]
    raise ValueError(
        f"step {step} is not a committed step of {directory} (committed: {available}). "
        f"Received: step={step}"
    )


def move_aside(directory: epath.PathLike, step: int) -> epath.Path:
    """Renames committed `step` to `<step>.damaged-<n>` (the first free n).

    The step is kept for inspection but no longer listed, so a run that fell
    back to an earlier step can commit this step number again.

    Returns:
        The new path.

    Raises:
        OSError: If the rename fails.
    """
    source = step_dir(directory, step)
    n = 0
    while (target := source.parent / f"{source.name}.damaged-{n}").exists():
        n += 1
    source.rename(target)
    return target


def saved_checkpointables(path: epath.PathLike) -> Sequence[str]:
    """Names of the checkpointables saved in one step directory."""
    with orbax_context():
        return list(ocp.checkpointables_metadata(path).metadata.keys())


def read_record(path: epath.PathLike) -> StepRecord | None:
    """The `podfit` record of one step directory, or None if it has none.

    Steps written by stock `keras.callbacks.OrbaxCheckpoint` have no record.
    """
    if RECORD not in saved_checkpointables(path):
        return None
    with orbax_context():
        raw = ocp.load_checkpointables(path, {RECORD: None})[RECORD]
    return StepRecord.from_json(raw)


def size_bytes(path: epath.PathLike) -> int:
    """Total size of the files under `path`."""
    total = 0
    for child in epath.Path(path).iterdir():
        total += size_bytes(child) if child.is_dir() else child.stat().length
    return total
