"""Reading steps back: onto any topology, straight into the current shardings."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time
from collections.abc import Mapping
from typing import Any

import keras
from absl import logging
from etils import epath
from orbax.checkpoint import v1 as ocp

from checkpointing import events, layout, manifest
from checkpointing.coordination import Coordinator, next_instance
from checkpointing.manifest import CheckpointCorruptError
from checkpointing.metadata import Progress, StepRecord, Topology, Versions, flatten_with_paths
from checkpointing.retry import retried
from checkpointing.targets import CheckpointMismatchError, abstract_targets

__all__ = ["CheckpointMismatchError", "Restored", "restore", "restore_latest"]


@dataclasses.dataclass(frozen=True)
class Restored:
    """What `restore` put into the model, and what came with it.

    Attributes:
        step: The global step restored.
        progress: Where training stood (see `Progress`).
        data_state: The data position saved with the step.
        callback_state: The callback's state, e.g. `{"best": ...}`.
        metadata: User metadata (e.g. the config snapshot).
        topology: Where the step was written (not where it was restored).
        versions: Library versions it was written with.
    """

    step: int
    progress: Progress
    data_state: Mapping[str, Any]
    callback_state: Mapping[str, Any]
    metadata: Mapping[str, Any]
    topology: Topology | None
    versions: Versions | None


def _prepare(model: keras.Model) -> None:
    if not model.built:
        raise ValueError(
            "restore needs a built model (call it once or build it). "
            f"Received: model={model.name!r} with built=False"
        )
    if getattr(model, "optimizer", None) is None:
        raise ValueError(
            f"restore needs a compiled model. Received: model={model.name!r} with no optimizer"
        )
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)


def restore(
    directory: epath.PathLike, model: keras.Model, step: int, *, verify: bool = True
) -> Restored:
    """Loads committed `step` of `directory` into `model`, in place.

    The model must be built and compiled (its optimizer variables are built
    here if needed). Arrays are read directly into the shardings of the
    model's variables, so a step written under one topology (processes,
    devices, mesh, layouts) restores under any other the shapes fit.
    Call it on every process.

    Before reading, the step is checked against its manifest (sizes and
    CRC-32 of every file, see `manifest.py`): a damaged step is logged
    (absl error per file: expected vs found) and not read; a step without a
    manifest is read with a warning ("unverified"). The check is this
    process' own, of the whole step, so `restore` needs no other process;
    `restore_latest` shares the check between processes instead.

    Args:
        directory: The checkpoint root.
        model: A built, compiled Keras model.
        step: A committed global step.
        verify: Check the manifest first (`restore_latest` checks before
            and passes False).

    Returns:
        The `Restored` step.

    Raises:
        CheckpointCorruptError: If the step fails verification (a ValueError).
        CheckpointMismatchError: If the step was written by a different model
            (a ValueError listing every differing variable with both shapes).
        ValueError: If `step` is not committed.
    """
    started = time.monotonic()
    restored = _restore_step(directory, model, step, verify=verify)
    events.emit("restore", step=step, seconds=round(time.monotonic() - started, 3))
    return restored


def _restore_step(
    directory: epath.PathLike, model: keras.Model, step: int, *, verify: bool
) -> Restored:
    """`restore` without its event."""
    path = layout.step_path(directory, step)
    _prepare(model)
    if not verify:
        return _apply(step, *_read(path, model))
    # The manifest check and the read run at once (both mostly wait on the
    # disk or run outside the GIL; the page cache serves the second reader),
    # and the model is assigned only once the check passed.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="podfit-verify") as pool:
        checking = pool.submit(manifest.verify, path)
        read, error = _try_read(path, model)
        verdict = checking.result()
    manifest.report(verdict, path)
    if not verdict.usable:
        raise CheckpointCorruptError(
            f"step {step} of {directory} is damaged: {'; '.join(verdict.problems)}. "
            f"Received: step={step}"
        ) from error
    if error is not None:
        raise error
    return _apply(step, *read)


def _read(path: epath.Path, model: keras.Model) -> tuple[dict, dict]:
    """(what Orbax loaded, {group: {saved path: variable}}); the model is untouched."""
    with layout.orbax_context():
        # One read of the step's metadata: the names saved and the tree's.
        saved = ocp.checkpointables_metadata(path).metadata
    abstract, matched = abstract_targets(model, saved[layout.PYTREE], path)
    request: dict[str, Any] = {layout.PYTREE: abstract}
    if layout.RECORD in saved:
        request[layout.RECORD] = None
    context = layout.orbax_context()
    # Skipped metric variables leave the target a subset of what was saved.
    context.pytree.loading.partial_load = True
    with context:
        loaded = ocp.load_checkpointables(path, request)
    return loaded, matched


def _try_read(path: epath.Path, model: keras.Model) -> tuple[tuple | None, Exception | None]:
    """`_read`, with its error returned instead of raised (decided on after the check)."""
    try:
        return retried(path, lambda: _read(path, model)), None
    except Exception as e:  # noqa: BLE001 - re-raised by the caller unless the step is damaged.
        return None, e


def _apply(step: int, loaded: dict, matched: dict) -> Restored:
    """Assigns what `_read` loaded to the model's variables."""
    for group, variables in matched.items():
        values = flatten_with_paths(loaded[layout.PYTREE][group])
        for saved_path, variable in variables.items():
            variable.assign(values[saved_path])
    if layout.RECORD not in loaded:  # Written by keras.callbacks.OrbaxCheckpoint.
        return Restored(step, Progress(step, 0, 0), {}, {}, {}, None, None)
    record = StepRecord.from_json(loaded[layout.RECORD])
    return Restored(
        step=step,
        progress=record.progress,
        data_state=record.data_state,
        callback_state=record.callback_state,
        metadata=record.metadata,
        topology=record.topology,
        versions=record.versions,
    )


def restore_latest(
    directory: epath.PathLike, model: keras.Model, *, timeout_s: float = 300.0
) -> Restored | None:
    """Restores the latest committed step of `directory` into `model`.

    Call it on every process (and in the same order as the callbacks built).

    The steps process 0 lists are verified, latest first, against their
    manifests, each process checking a share of the files: a damaged step
    is logged loudly (absl error naming the step, the file, expected vs
    found) and skipped for the previous one; a step without a manifest is
    used with a warning. Every process restores the same step, chosen from
    the same verdicts. Once every process is done reading them, process 0
    moves the damaged steps after the chosen one aside (`<step>.damaged-<n>`,
    renamed, never deleted), so that training from the chosen step can commit
    those step numbers again. A file that cannot be read (`OSError`) is
    retried with backoff, then raised on every process: it is not damage,
    and nothing is moved. Meanwhile every process already reads the latest step
    (verifying and reading at once); the model is assigned only after the
    choice, and what was read is dropped if an earlier step was chosen.

    Args:
        directory: The checkpoint root (need not exist).
        model: A built, compiled Keras model.
        timeout_s: How long each process waits for process 0's listing, and
            for the other processes' verdicts on each step.

    Returns:
        The `Restored` step, or None if there is no committed step.

    Raises:
        CheckpointCorruptError: If there are committed steps but none verifies
            (on every process).
        CheckpointMismatchError: If the chosen step was written by a different
            model (on every process).
        OSError: If a step stays unreadable, or a damaged one cannot be moved
            aside (on every process).
    """
    started = time.monotonic()
    restored = _restore_latest(directory, model, timeout_s)
    if restored is not None:
        events.emit("restore", step=restored.step, seconds=round(time.monotonic() - started, 3))
    return restored


def _restore_latest(
    directory: epath.PathLike, model: keras.Model, timeout_s: float
) -> Restored | None:
    """`restore_latest` without its event."""
    coordinator = Coordinator.create(str(directory), next_instance(), 0, timeout_s)
    steps = coordinator.committed_steps(directory)
    latest = steps[-1] if steps else None
    read, error = None, None
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="podfit-verify") as pool:
        choosing = pool.submit(_choose, directory, steps, coordinator)
        if latest is not None:
            # Read the latest step while it is verified: usually it is the one
            # chosen, and the read costs no extra time.
            _prepare(model)
            read, error = _try_read(layout.step_dir(layout.root(directory), latest), model)
        # The same on every process: the same steps, the same merged verdicts.
        chosen, damaged = choosing.result()
    if latest is None:
        return None
    if chosen is None:
        raise CheckpointCorruptError(
            f"no usable step in {directory}: every committed step is damaged "
            f"({damaged}). Received: directory={directory}"
        )
    if damaged:
        _move_aside(directory, damaged, chosen, coordinator)
    if chosen == latest:
        if error is not None:
            raise error
        return _apply(latest, *read)
    del read  # The latest step was damaged: drop what was read of it.
    return _restore_step(directory, model, chosen, verify=False)


def _move_aside(
    directory: epath.PathLike, damaged: list[int], chosen: int, coordinator: Coordinator
) -> None:
    """Process 0 moves the damaged steps aside once every process is done reading them.

    Renamed, not deleted (`layout.move_aside`): the run goes on from `chosen`
    and may commit those step numbers again.

    Raises:
        OSError: On every process, if process 0 could not rename a step.
    """
    coordinator.barrier(f"{coordinator.namespace}/damaged", chosen)
    outcome = ""
    if coordinator.process_index == 0:
        try:
            for step in damaged:
                moved = layout.move_aside(layout.root(directory), step)
                logging.error("checkpointing: moved damaged step %d aside to %s", step, moved)
        except OSError as e:
            outcome = repr(e)
    outcome = coordinator.share("moved_aside", chosen, outcome)
    if outcome:
        raise OSError(f"could not move damaged step(s) {damaged} of {directory} aside: {outcome}")


def _choose(
    directory: epath.PathLike, steps: list[int], coordinator: Coordinator
) -> tuple[int | None, list[int]]:
    """(The latest usable of `steps` or None, the damaged steps after it, latest first).

    The same on every process. A step that cannot be read raises (OSError,
    on every process): it is not damage.
    """
    damaged = []
    for step in reversed(steps):
        path = layout.step_dir(layout.root(directory), step)
        verdict = manifest.verify_shared(path, step, coordinator)
        if coordinator.process_index == 0:
            manifest.report(verdict, path)
        if verdict.usable:
            if damaged and coordinator.process_index == 0:
                logging.error(
                    "checkpointing: restoring step %d of %s instead of damaged step(s) %s",
                    step,
                    directory,
                    damaged,
                )
            return step, damaged
        damaged.append(step)
    return None, damaged
