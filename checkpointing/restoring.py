"""Reading steps back: onto any topology, straight into the current shardings."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping
from typing import Any

import jax
import keras
from absl import logging
from etils import epath
from orbax.checkpoint import v1 as ocp

from checkpointing import layout, manifest
from checkpointing.coordination import Coordinator, next_instance
from checkpointing.manifest import CheckpointCorruptError, Verdict
from checkpointing.metadata import Progress, StepRecord, Topology, Versions, flatten_with_paths


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


@dataclasses.dataclass(frozen=True)
class StepInfo:
    """One committed step, as `list_steps` reports it."""

    step: int
    time: datetime.datetime | None
    size_bytes: int
    topology: str
    metrics: Mapping[str, float]


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


def _groups(model: keras.Model) -> dict[str, list]:
    """The variable groups of `model.get_state_tree()`, in its order."""
    return {
        "trainable_variables": list(model.trainable_variables),
        "non_trainable_variables": list(model.non_trainable_variables),
        "optimizer_variables": list(model.optimizer.variables),
        "metrics_variables": list(model.metrics_variables),
    }


def _strip_first(path: str) -> str:
    return path.split("/", 1)[-1]


def _match(group: str, saved_paths: list[str], variables: list, where: epath.Path) -> dict:
    """Saved path -> model variable, by path.

    Optimizer variables are also matched without the optimizer's own name,
    which Keras makes unique per process ("adam", "adam_1", ...).
    """
    by_path = {v.path: v for v in variables}
    if all(p in by_path for p in saved_paths):
        return {p: by_path[p] for p in saved_paths}
    if group == "optimizer_variables":
        by_suffix = {_strip_first(v.path): v for v in variables}
        if len(by_suffix) == len(variables) and all(
            _strip_first(p) in by_suffix for p in saved_paths
        ):
            return {p: by_suffix[_strip_first(p)] for p in saved_paths}
    missing = sorted(p for p in saved_paths if p not in by_path)
    raise ValueError(
        f"the model has no {group} for {len(missing)} path(s) saved in {where}, "
        f"e.g. {missing[:3]}. Received: model {group} {sorted(by_path)[:3]}..."
    )


def _unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def _targets(model: keras.Model, saved: Mapping[str, Any], where: epath.Path):
    """(abstract tree in the saved structure, {group: {path: variable}})."""
    groups = _groups(model)
    abstract, matched = {}, {}
    for group, tree in saved.items():
        if group not in groups:
            raise ValueError(f"unknown variable group in {where}. Received: {group!r}")
        flat_saved = flatten_with_paths(tree)
        if group == "metrics_variables":
            # Compiled metrics get their variables on the first fit/evaluate;
            # they are running averages reset each epoch, so a fresh model may
            # lack some. Restore those it has.
            known = {v.path for v in groups[group]}
            skipped = sorted(p for p in flat_saved if p not in known)
            if skipped:
                logging.info("restore: model has no metric variables %s yet; skipped", skipped)
            flat_saved = {p: m for p, m in flat_saved.items() if p in known}
            if not flat_saved:
                continue
        matched[group] = _match(group, list(flat_saved), groups[group], where)
        flat_abstract = {}
        for path, variable in matched[group].items():
            meta, value = flat_saved[path], variable.value
            if tuple(meta.shape) != tuple(value.shape):
                raise ValueError(
                    f"{group}/{path} in {where} has shape {tuple(meta.shape)}. "
                    f"Received: model variable of shape {tuple(value.shape)}"
                )
            # The target sharding is the variable's current one: Orbax reads
            # only the shards this process holds, whatever layout wrote them.
            flat_abstract[path] = jax.ShapeDtypeStruct(
                value.shape, value.dtype, sharding=getattr(value, "sharding", None)
            )
        abstract[group] = _unflatten(flat_abstract)
    return abstract, matched


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
    manifest is read with a warning ("unverified").

    Args:
        directory: The checkpoint root.
        model: A built, compiled Keras model.
        step: A committed global step.
        verify: Check the manifest first (`restore_latest` checks on
            process 0 and passes False).

    Returns:
        The `Restored` step.

    Raises:
        CheckpointCorruptError: If the step fails verification (a ValueError).
        ValueError: If `step` is not committed, or the model does not match.
    """
    path = layout.step_path(directory, step)
    _prepare(model)
    if verify:
        verdict = manifest.verify(path)
        manifest.report(verdict, path)
        if not verdict.usable:
            raise CheckpointCorruptError(
                f"step {step} of {directory} is damaged: {'; '.join(verdict.problems)}. "
                f"Received: step={step}"
            )
    names = layout.saved_checkpointables(path)
    with layout.orbax_context():
        saved = ocp.metadata(path, checkpointable_name=layout.PYTREE).metadata
    abstract, matched = _targets(model, saved, path)
    request: dict[str, Any] = {layout.PYTREE: abstract}
    if layout.RECORD in names:
        request[layout.RECORD] = None
    context = layout.orbax_context()
    # Skipped metric variables leave the target a subset of what was saved.
    context.pytree.loading.partial_load = True
    with context:
        loaded = ocp.load_checkpointables(path, request)
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

    Process 0 verifies the steps, latest first, against their manifests:
    a damaged step is logged loudly (absl error naming the step, the file,
    expected vs found) and skipped for the previous one; a step without a
    manifest is used with a warning. Every process restores the step process
    0 chose.

    Args:
        directory: The checkpoint root (need not exist).
        model: A built, compiled Keras model.
        timeout_s: How long other processes wait for process 0's listing.

    Returns:
        The `Restored` step, or None if there is no committed step.

    Raises:
        CheckpointCorruptError: If there are committed steps but none verifies
            (on every process).
    """
    coordinator = Coordinator.create(str(directory), next_instance(), 0, timeout_s)
    choice = _choose(directory) if coordinator.process_index == 0 else ""
    # Every process must restore the same step: process 0 decides.
    choice = coordinator.share("restore_latest", 0, choice)
    if choice == "none":
        return None
    if choice.startswith("damaged:"):
        raise CheckpointCorruptError(
            f"no usable step in {directory}: every committed step is damaged "
            f"({choice.removeprefix('damaged:')}). Received: directory={directory}"
        )
    return restore(directory, model, int(choice), verify=False)


def _choose(directory: epath.PathLike) -> str:
    """Process 0's pick: the latest usable step, "none" or "damaged:<steps>"."""
    steps = layout.committed_steps(directory)
    if not steps:
        return "none"
    damaged = []
    for found in reversed(steps):
        verdict = manifest.verify(found.path)
        manifest.report(verdict, found.path)
        if verdict.usable:
            if damaged:
                logging.error(
                    "checkpointing: restoring step %d of %s instead of damaged step(s) %s",
                    found.step,
                    directory,
                    damaged,
                )
            return str(found.step)
        damaged.append(found.step)
    return f"damaged:{damaged}"


def verify_steps(directory: epath.PathLike, step: int | None = None) -> list[Verdict]:
    """Checks the committed steps of `directory` (or only `step`), ascending.

    Raises:
        ValueError: If `directory` does not exist or `step` is not committed.
    """
    if not epath.Path(directory).exists():
        raise ValueError(f"checkpoint directory does not exist. Received: directory={directory}")
    if step is not None:
        return [manifest.verify(layout.step_path(directory, step))]
    return [manifest.verify(found.path) for found in layout.committed_steps(directory)]


def list_steps(directory: epath.PathLike) -> list[StepInfo]:
    """The committed steps of `directory`, ascending.

    Raises:
        ValueError: If `directory` does not exist.
    """
    if not epath.Path(directory).exists():
        raise ValueError(f"checkpoint directory does not exist. Received: directory={directory}")
    infos = []
    for found in layout.committed_steps(directory):
        record = layout.read_record(found.path)
        stamp = found.commit_timestamp_nsecs
        when = (
            None if stamp is None else datetime.datetime.fromtimestamp(stamp / 1e9, tz=datetime.UTC)
        )
        infos.append(
            StepInfo(
                step=found.step,
                time=when,
                size_bytes=layout.size_bytes(found.path),
                topology="unknown" if record is None else record.topology.summary(),
                metrics={} if record is None else dict(record.metrics),
            )
        )
    return infos
