"""Mesh and layouts from the config -> a keras.distribution.

DataParallel when the mesh has only the batch axis, ModelParallel with an
ordered LayoutMap otherwise; with "auto" among the layout rules,
`AutoShardParallel` (fully sharded data parallelism on top of the rules).
A model whose factory has `get_layout_map` (KerasHub backbones) gives its
own rules: at the "backbone" entry, or when no explicit rule is given.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax
import keras
import numpy as np
from jax.experimental import mesh_utils

from configs.validation import AUTO, BACKBONE, BATCH_AXIS, ConfigError

# The axis a model's own layouts (get_layout_map) shard over besides `data`.
MODEL_AXIS = "model"


class OrderedLayoutMap(keras.distribution.LayoutMap):
    """A LayoutMap whose rules are tried in order; the first match wins.

    Keras' LayoutMap refuses a path that two regexes match; podfit configs
    list rules from specific to general instead, as MaxText and big_vision do.
    """

    def __init__(self, device_mesh, rules: Sequence[tuple[str, tuple]]):
        super().__init__(device_mesh)
        self._rules = [(re.compile(pattern), tuple(spec)) for pattern, spec in rules]
        for pattern, spec in rules:
            super().__setitem__(pattern, tuple(spec))

    def __getitem__(self, key):
        for pattern, _ in self._rules:
            if pattern.search(key):
                return self._layout_map[pattern.pattern]
        return None


def auto_axes(shape: Sequence[int], axes: Sequence, data_size: int, min_size: int) -> tuple:
    """`axes` plus the batch axis on the largest free dimension it divides.

    Variables under `min_size` elements, already sharded over the batch axis,
    or with no free dimension divisible by `data_size` keep `axes`.
    """
    axes = tuple(axes) if axes else (None,) * len(shape)
    used = {a for entry in axes for a in (entry if isinstance(entry, tuple | list) else (entry,))}
    if data_size <= 1 or math.prod(shape) < min_size or BATCH_AXIS in used:
        return axes
    free = [d for d, n in enumerate(shape) if axes[d] is None and n % data_size == 0]
    if not free:
        return axes
    dim = max(free, key=lambda d: shape[d])  # The first of equal sizes.
    return axes[:dim] + (BATCH_AXIS,) + axes[dim + 1 :]


class AutoShardParallel(keras.distribution.ModelParallel):
    """ModelParallel that also shards every large variable over the batch axis.

    Fully sharded data parallelism for any model: a LayoutMap lookup gets
    only the variable's path, so this hook (`get_variable_layout`, called
    when each variable is created, with its shape) adds the batch axis to the
    explicit rules' layout (`auto_axes`). Optimizer slots are created with
    their variable's layout (`add_variable_from_reference`), so they are
    sharded alike. Activations keep the rules' layouts (`get_tensor_layout`).
    """

    def __init__(self, layout_map, min_size: int, **kwargs):
        super().__init__(layout_map=layout_map, batch_dim_name=BATCH_AXIS, **kwargs)
        self._min_size = int(min_size)
        self._data_size = self.device_mesh.shape[self.device_mesh.axis_names.index(BATCH_AXIS)]

    def get_variable_layout(self, variable):
        if getattr(variable, "_layout", None) is not None:
            return variable._layout  # Given at creation: optimizer slots.
        layout = super().get_variable_layout(variable)
        axes = auto_axes(variable.shape, layout.axes, self._data_size, self._min_size)
        return keras.distribution.TensorLayout(axes, self.device_mesh)


def split_rules(layout_rules) -> tuple[bool, tuple]:
    """(whether "auto" is among `layout_rules`, the explicit (regex, spec) rules)."""
    if isinstance(layout_rules, str):
        layout_rules = (layout_rules,)
    rules = tuple(r for r in layout_rules if not (isinstance(r, str) and r == AUTO))
    return len(rules) != len(tuple(layout_rules)), rules


def layout_map_rules(layout_map) -> tuple[tuple[str, tuple], ...]:
    """A keras LayoutMap's (regex, axes) entries, in its order."""
    return tuple((key, tuple(layout_map[key].axes)) for key in layout_map)


def with_model_rules(
    rules: Sequence, model_layout: Callable | None, device_mesh, axis_names: Sequence[str]
) -> tuple:
    """`rules` with the model's own layouts in place of the "backbone" entry.

    Without that entry, a model that has layouts (`model_layout`, its
    factory's `get_layout_map(device_mesh)`) gets them when `rules` holds no
    explicit rule and the mesh has a `model` axis.

    Raises:
      ConfigError: "backbone" for a model without layouts, or the layouts
        cannot be made for this mesh.
    """
    rules = tuple(rules)
    explicit = [r for r in rules if not isinstance(r, str)]
    if BACKBONE not in rules:
        if explicit or model_layout is None or MODEL_AXIS not in axis_names:
            return rules
        rules = (*rules, BACKBONE)
    if model_layout is None:
        raise ConfigError(
            "mesh.layout_rules",
            f"{BACKBONE!r} needs a model whose factory has get_layout_map (gemma, llama).",
            rules,
        )
    try:
        own = layout_map_rules(model_layout(device_mesh))
    except ConfigError:
        raise
    except Exception as e:  # The model's code: its failure is reported as bad input.
        raise ConfigError(
            "mesh.layout_rules",
            f"the model's get_layout_map raised {type(e).__name__}: {' '.join(str(e).split())}",
            rules,
        ) from e
    out = []
    for rule in rules:
        out.extend(own if isinstance(rule, str) and rule == BACKBONE else (rule,))
    return tuple(out)


@dataclass(frozen=True)
class DataShard:
    """Which rows of every global batch this process feeds.

    Processes whose devices hold the same rows of the batch axis (a data row
    spanning several processes) feed the same rows.
    """

    index: int
    count: int


def device_array(
    mesh_shape: Sequence[int],
    axis_names: Sequence[str],
    dcn_shape: Sequence[int] = (),
    devices: Sequence | None = None,
) -> np.ndarray:
    """All global devices laid out as the mesh, in a topology-aware order.

    `jax.make_mesh` (mesh_utils.create_device_mesh underneath) puts devices
    that talk the most next to each other on TPU and GPU topologies, where
    flat `jax.devices()` order does not. With `dcn_shape` (multi-slice TPU),
    `mesh_utils.create_hybrid_device_mesh` lays each slice out that way and
    the slices (devices' `slice_index`) along the axes `dcn_shape` names.
    The same array must give both the distribution and `process_grid`, so
    that each process feeds the rows its devices hold.

    Args:
      mesh_shape: The global mesh's shape (validate()'s result: per-slice
        shape times `dcn_shape` per axis).
      axis_names: Its axis names.
      dcn_shape: Slices along each axis; () for one slice.
      devices: The devices to lay out (default `jax.devices()`).
    """
    devices = jax.devices() if devices is None else list(devices)
    if not tuple(dcn_shape):
        return jax.make_mesh(tuple(mesh_shape), tuple(axis_names), devices=devices).devices
    per_slice = [m // d for m, d in zip(mesh_shape, dcn_shape, strict=True)]
    return mesh_utils.create_hybrid_device_mesh(per_slice, tuple(dcn_shape), devices)


def build_distribution(
    mesh_shape: Sequence[int],
    axis_names: Sequence[str],
    layout_rules: Sequence[tuple[str, tuple] | str] | str,
    devices: np.ndarray | None = None,
    auto_min_size: int = 2**14,
    model_layout: Callable | None = None,
) -> keras.distribution.Distribution:
    """Returns the keras.distribution for the mesh over all global devices.

    Args:
      mesh_shape: The mesh's shape.
      axis_names: Its axis names; the batch axis is `data`.
      layout_rules: (regex, spec) pairs, the first match wins; the entry
        "auto" (or `layout_rules="auto"`) adds fully sharded data parallelism
        (`AutoShardParallel`).
      devices: `device_array(mesh_shape, axis_names)` (the default: one slice).
      auto_min_size: With "auto", variables of fewer elements stay as the
        rules lay them out.
      model_layout: The model's own layouts, `get_layout_map(device_mesh)`
        returning a keras LayoutMap (`models.layout_map_fn`); used at the
        "backbone" entry, or when there is no explicit rule (`with_model_rules`).
    """
    if devices is None:
        devices = device_array(mesh_shape, axis_names)
    mesh = keras.distribution.DeviceMesh(tuple(mesh_shape), list(axis_names), devices)
    auto, rules = split_rules(layout_rules)
    rules = with_model_rules(rules, model_layout, mesh, axis_names)
    layout_map = OrderedLayoutMap(mesh, rules)
    if auto:
        return AutoShardParallel(layout_map, auto_min_size, auto_shard_dataset=False)
    if tuple(axis_names) == (BATCH_AXIS,):
        return keras.distribution.DataParallel(device_mesh=mesh, auto_shard_dataset=False)
    return keras.distribution.ModelParallel(
        layout_map=layout_map, batch_dim_name=BATCH_AXIS, auto_shard_dataset=False
    )


def process_grid(devices: np.ndarray) -> np.ndarray:
    """The process index of each device of the mesh's device array, in its layout."""
    return np.vectorize(lambda d: d.process_index, otypes=[int])(devices)


def data_shard(grid: np.ndarray, axis_names: Sequence[str], process_index: int) -> DataShard:
    """The slice of each global batch that `process_index` feeds.

    Args:
      grid: `process_grid(devices)` of the distribution's device array: the
        process owning each mesh position.
      axis_names: the mesh axis names; the batch axis is `data`.
      process_index: this process.

    The batch axis is split into as many contiguous blocks as there are
    distinct groups of processes along it; JAX assembles the global batch from
    these process-local blocks (`jax.make_array_from_process_local_data`).
    """
    mesh_shape = grid.shape
    batch_dim = list(axis_names).index(BATCH_AXIS)
    ids = np.moveaxis(grid, batch_dim, 0).reshape(grid.shape[batch_dim], -1)
    # rows_of[p]: the batch-axis rows process p holds a device in.
    rows_of = {int(p): [r for r in range(ids.shape[0]) if p in ids[r]] for p in np.unique(ids)}
    groups = sorted({tuple(rows) for rows in rows_of.values()})
    covered = [r for rows in groups for r in rows]
    contiguous = all(list(rows) == list(range(rows[0], rows[0] + len(rows))) for rows in groups)
    if not contiguous or len(covered) != len(set(covered)) or len({len(g) for g in groups}) != 1:
        raise ValueError(
            f"mesh.shape {tuple(mesh_shape)} gives processes overlapping or uneven blocks of the "
            f"{BATCH_AXIS!r} axis. Received: rows per process {rows_of}"
        )
    return DataShard(index=groups.index(tuple(rows_of[process_index])), count=len(groups))
