"""What a checkpoint step records besides the arrays: frozen values and JSON.

Every step holds one JSON record (the `podfit` checkpointable, see
`layout.py`) made of the values below. They are plain frozen dataclasses so
that the trainer, the CLI and tests read fields, not string keys.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
from collections.abc import Mapping
from importlib import metadata as importlib_metadata
from typing import Any

import jax

from checkpointing.options import check_json  # noqa: F401 - part of this module's API.

# Bumped when the record's fields change incompatibly.
RECORD_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class Progress:
    """Where training stood when the step was saved.

    Attributes:
        global_step: `model.optimizer.iterations` at save time; also the step
            directory's name.
        epoch: The epoch to resume in (0-based; what `fit(initial_epoch=...)`
            takes).
        step_in_epoch: Batches of `epoch` already trained (0 at an epoch
            boundary).
    """

    global_step: int
    epoch: int
    step_in_epoch: int


@dataclasses.dataclass(frozen=True)
class Topology:
    """The machine and layout a step was written on.

    Attributes:
        process_count: `jax.process_count()`.
        device_count: `jax.device_count()` (all processes).
        platform: e.g. "cpu", "gpu", "tpu".
        device_kind: e.g. "cpu", "TPU v5 lite".
        mesh_shape: The Keras distribution's mesh shape, if one was set.
        mesh_axis_names: Its axis names, if one was set.
        partition_specs: Variable path -> partition spec (one entry per array
            dimension: None, an axis name, or a list of axis names), for
            variables laid out by a distribution.
    """

    process_count: int
    device_count: int
    platform: str
    device_kind: str
    mesh_shape: tuple[int, ...] | None = None
    mesh_axis_names: tuple[str, ...] | None = None
    partition_specs: Mapping[str, tuple] = dataclasses.field(default_factory=dict)

    def summary(self) -> str:
        """One line, e.g. `2 proc x 8 cpu, mesh data=4 model=2`."""
        text = f"{self.process_count} proc x {self.device_count} {self.platform}"
        if self.mesh_shape is not None and self.mesh_axis_names is not None:
            axes = " ".join(
                f"{n}={s}" for n, s in zip(self.mesh_axis_names, self.mesh_shape, strict=True)
            )
            text += f", mesh {axes}"
        return text


@dataclasses.dataclass(frozen=True)
class Versions:
    """Library versions a step was written with."""

    jax: str
    keras: str
    orbax: str
    python: str


@dataclasses.dataclass(frozen=True)
class StepRecord:
    """Everything but the arrays, as stored in one step.

    Attributes:
        progress: See `Progress`.
        data_state: The data position returned by the callback's `data_state`.
        callback_state: The callback's own state, e.g. `{"best": 0.12,
            "monitor": "val_loss", "mode": "min"}`.
        metadata: User metadata, e.g. the config snapshot.
        topology: See `Topology`.
        versions: See `Versions`.
        metrics: Scalar logs at save time (e.g. loss, val_loss).
        time: Seconds since the epoch when the save was requested.
    """

    progress: Progress
    data_state: Mapping[str, Any]
    callback_state: Mapping[str, Any]
    metadata: Mapping[str, Any]
    topology: Topology
    versions: Versions
    metrics: Mapping[str, float]
    time: float

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["format"] = RECORD_FORMAT
        return json.loads(json.dumps(out))

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> StepRecord:
        """Inverse of `to_json`.

        Raises:
            ValueError: If the record was written by an incompatible format.
        """
        found = raw.get("format")
        if found != RECORD_FORMAT:
            raise ValueError(
                f"checkpoint record format {RECORD_FORMAT} is supported. Received: format={found}"
            )
        topo = dict(raw["topology"])
        for key in ("mesh_shape", "mesh_axis_names"):
            if topo.get(key) is not None:
                topo[key] = tuple(topo[key])
        topo["partition_specs"] = {
            path: tuple(tuple(a) if isinstance(a, list) else a for a in spec)
            for path, spec in (topo.get("partition_specs") or {}).items()
        }
        return cls(
            progress=Progress(**raw["progress"]),
            data_state=dict(raw["data_state"]),
            callback_state=dict(raw["callback_state"]),
            metadata=dict(raw["metadata"]),
            topology=Topology(**topo),
            versions=Versions(**raw["versions"]),
            metrics=dict(raw["metrics"]),
            time=float(raw["time"]),
        )


def _version(package: str) -> str:
    try:
        return importlib_metadata.version(package)
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


def current_versions() -> Versions:
    """The versions of jax, keras, orbax-checkpoint and Python in use."""
    return Versions(
        jax=jax.__version__,
        keras=_version("keras"),
        orbax=_version("orbax-checkpoint"),
        python=platform.python_version(),
    )


def _spec_to_json(spec: Any) -> tuple:
    return tuple(list(a) if isinstance(a, tuple) else a for a in spec)


def current_topology(state_tree: Mapping[str, Any] | None = None) -> Topology:
    """The topology of this run.

    Args:
        state_tree: The model's `get_state_tree()`; when given, the partition
            spec of every leaf laid out by a `NamedSharding` is recorded.

    Returns:
        A `Topology`. The mesh comes from the active Keras distribution.
    """
    import keras  # Local: keeps `import checkpointing.metadata` light for the CLI.

    device = jax.devices()[0]
    mesh_shape = axis_names = None
    distribution = keras.distribution.distribution()
    if distribution is not None:
        mesh = distribution.device_mesh
        mesh_shape = tuple(int(s) for s in mesh.shape)
        axis_names = tuple(str(a) for a in mesh.axis_names)
    specs: dict[str, tuple] = {}
    if state_tree is not None and distribution is not None:
        for path, leaf in flatten_with_paths(state_tree).items():
            sharding = getattr(leaf, "sharding", None)
            if isinstance(sharding, jax.sharding.NamedSharding):
                specs[path] = _spec_to_json(sharding.spec)
    return Topology(
        process_count=jax.process_count(),
        device_count=jax.device_count(),
        platform=device.platform,
        device_kind=device.device_kind,
        mesh_shape=mesh_shape,
        mesh_axis_names=axis_names,
        partition_specs=specs,
    )


def flatten_with_paths(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {"a/b/c": leaf}, the way Keras names state-tree paths."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten_with_paths(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def scalar_logs(logs: Mapping[str, Any] | None, *, finite: bool = True) -> dict[str, float]:
    """The scalar entries of Keras `logs`, as Python floats.

    Non-numeric entries (and arrays of more than one element) are not
    metrics and are left out; so are NaN and infinities unless `finite` is
    False (a metrics log shows a diverging loss; a retention policy must not
    rank by it).
    """
    out = {}
    for key, value in (logs or {}).items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if not finite or math.isfinite(number):
            out[key] = number
    return out
