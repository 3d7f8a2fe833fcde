"""Checks a config before any device work.

Each failure is a `ConfigError` whose message is one line naming the field
and echoing the received value; the launcher prints it and exits with 2.
Nothing here imports JAX: the device and process counts come in as numbers.
The checkpoint section is checked by `checkpointing.options.CheckpointOptions`
(which imports no JAX either), so its rules live in one place.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from checkpointing.options import CheckpointOptions, OptionError
from configs import base

BATCH_AXIS = "data"
SECTIONS = ("mesh", "data", "model", "optimizer", "trainer", "checkpoint")
OPTIMIZERS = ("adamw", "adam", "sgd")
COMMON_DATA_KEYS = ("name", "global_batch_size", "seed")


class ConfigError(ValueError):
    """A config field holds a value podfit cannot run with."""

    def __init__(self, field: str, message: str, received: Any):
        self.field = field
        super().__init__(f"config.{field}: {message} Received: {field}={received!r}")


def _as_dict(node: Any) -> dict:
    return node.to_dict() if hasattr(node, "to_dict") else dict(node)


def _check_keys(section: str, got: Mapping, allowed: Sequence[str]) -> None:
    for key in got:
        if key not in allowed:
            raise ConfigError(
                f"{section}.{key}", f"unknown key; {section} accepts {sorted(allowed)}.", got[key]
            )
    for key in allowed:
        if key not in got:
            raise ConfigError(f"{section}.{key}", "missing key.", None)


def _same_type(field: str, value: Any, default: Any) -> None:
    """Refuses a value whose type differs from the schema default's."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, tuple | list):
        ok = isinstance(value, tuple | list)
    else:
        ok = True
    if not ok:
        raise ConfigError(field, f"expected {type(default).__name__}.", value)


def _positive(field: str, value: Any, *, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(field, "expected a number.", value)
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(field, "must be >= 0." if allow_zero else "must be > 0.", value)


def _check_types(cfg: dict) -> None:
    schema = _as_dict(base.get_config())
    for section in ("mesh", "optimizer", "trainer", "checkpoint"):
        _check_keys(section, cfg[section], tuple(schema[section]))
        if section == "checkpoint":
            continue  # Checked by CheckpointOptions (checkpoint_options).
        for key, default in schema[section].items():
            _same_type(f"{section}.{key}", cfg[section][key], default)

    data_name = cfg["data"].get("name")
    if data_name not in base.DATA_DEFAULTS:
        raise ConfigError(
            "data.name", f"unknown data set; known: {sorted(base.DATA_DEFAULTS)}.", data_name
        )
    data_schema = {"global_batch_size": 1, "seed": 0, **base.DATA_DEFAULTS[data_name]}
    _check_keys("data", cfg["data"], ("name", *data_schema))
    for key, default in data_schema.items():
        _same_type(f"data.{key}", cfg["data"][key], default)

    model_name = cfg["model"].get("name")
    if model_name not in base.MODEL_DEFAULTS:
        raise ConfigError(
            "model.name", f"unknown model; known: {sorted(base.MODEL_DEFAULTS)}.", model_name
        )
    model_schema = base.MODEL_DEFAULTS[model_name]
    _check_keys("model", cfg["model"], ("name", *model_schema))
    for key, default in model_schema.items():
        _same_type(f"model.{key}", cfg["model"][key], default)


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Replaces the one -1 in `shape` with the devices that are left."""
    shape = tuple(shape)
    known = math.prod(d for d in shape if d != -1)
    if -1 in shape:
        if known == 0 or num_devices % known:
            raise ConfigError(
                "mesh.shape",
                f"the fixed axes ({known} devices) must divide {num_devices} devices.",
                shape,
            )
        shape = tuple(num_devices // known if d == -1 else d for d in shape)
    if math.prod(shape) != num_devices:
        raise ConfigError(
            "mesh.shape", f"needs {math.prod(shape)} devices but {num_devices} are present.", shape
        )
    return shape


def _check_mesh(mesh: dict, num_devices: int | None) -> tuple[int, ...] | None:
    shape, names = tuple(mesh["shape"]), tuple(mesh["axis_names"])
    if not shape or any(isinstance(d, bool) or not isinstance(d, int) for d in shape):
        raise ConfigError("mesh.shape", "expected a tuple of ints.", shape)
    if any(d == 0 or d < -1 for d in shape) or shape.count(-1) > 1:
        raise ConfigError("mesh.shape", "sizes must be > 0, with at most one -1.", shape)
    if len(names) != len(shape) or len(set(names)) != len(names):
        raise ConfigError(
            "mesh.axis_names",
            f"expected {len(shape)} distinct names, one per mesh.shape entry.",
            names,
        )
    if not all(isinstance(n, str) and n for n in names):
        raise ConfigError("mesh.axis_names", "expected non-empty strings.", names)
    if BATCH_AXIS not in names:
        raise ConfigError("mesh.axis_names", f"must include the batch axis {BATCH_AXIS!r}.", names)
    for i, rule in enumerate(mesh["layout_rules"]):
        field = f"mesh.layout_rules[{i}]"
        if not isinstance(rule, tuple | list) or len(rule) != 2 or not isinstance(rule[0], str):
            raise ConfigError(field, "expected a (regex, partition spec) pair.", rule)
        try:
            re.compile(rule[0])
        except re.error as e:
            raise ConfigError(field, f"bad regex: {e}.", rule[0]) from None
        spec = rule[1]
        if not isinstance(spec, tuple | list):
            raise ConfigError(
                field, "expected a partition spec tuple such as (None, 'model').", spec
            )
        for entry in spec:
            axes = entry if isinstance(entry, tuple | list) else (entry,)
            for axis in axes:
                if axis is not None and axis not in names:
                    raise ConfigError(
                        field, f"names mesh axis {axis!r}, not in mesh.axis_names {names}.", rule
                    )
    return resolve_mesh_shape(shape, num_devices) if num_devices is not None else None


def _check_values(cfg: dict, mesh_shape: tuple[int, ...] | None, num_processes: int | None) -> None:
    data, model, opt, tr, ck = (
        cfg[s] for s in ("data", "model", "optimizer", "trainer", "checkpoint")
    )
    batch = data["global_batch_size"]
    _positive("data.global_batch_size", batch)
    _positive("data.seed", data["seed"], allow_zero=True)
    if mesh_shape is not None:
        data_size = mesh_shape[list(cfg["mesh"]["axis_names"]).index(BATCH_AXIS)]
        if batch % data_size:
            raise ConfigError(
                "data.global_batch_size",
                f"must be divisible by the {BATCH_AXIS!r} mesh axis ({data_size}).",
                batch,
            )
    if num_processes is not None and batch % num_processes:
        raise ConfigError(
            "data.global_batch_size",
            f"must be divisible by the process count ({num_processes}).",
            batch,
        )
    for key in ("seq_len", "max_bytes"):
        if key in data:
            _positive(f"data.{key}", data[key])
    if "validation_fraction" in data and not 0 < data["validation_fraction"] < 1:
        raise ConfigError(
            "data.validation_fraction", "must be in (0, 1).", data["validation_fraction"]
        )

    for key in ("vocab_size", "num_layers", "num_heads", "embed_dim", "mlp_dim", "num_classes"):
        if key in model:
            _positive(f"model.{key}", model[key])
    if "hidden_sizes" in model:
        sizes = tuple(model["hidden_sizes"])
        if not sizes or any(isinstance(s, bool) or not isinstance(s, int) or s <= 0 for s in sizes):
            raise ConfigError(
                "model.hidden_sizes", "expected a non-empty tuple of ints > 0.", sizes
            )
    if "num_heads" in model and model["embed_dim"] % model["num_heads"]:
        raise ConfigError(
            "model.embed_dim",
            f"must be divisible by model.num_heads ({model['num_heads']}).",
            model["embed_dim"],
        )
    if not 0 <= model["dropout"] < 1:
        raise ConfigError("model.dropout", "must be in [0, 1).", model["dropout"])

    if opt["name"] not in OPTIMIZERS:
        raise ConfigError("optimizer.name", f"expected one of {OPTIMIZERS}.", opt["name"])
    _positive("optimizer.learning_rate", opt["learning_rate"])
    _positive("optimizer.weight_decay", opt["weight_decay"], allow_zero=True)
    _positive("optimizer.global_clipnorm", opt["global_clipnorm"], allow_zero=True)

    for key in ("epochs", "steps_per_epoch", "log_every"):
        _positive(f"trainer.{key}", tr[key])
    _positive("trainer.validation_steps", tr["validation_steps"], allow_zero=True)
    _positive("trainer.seed", tr["seed"], allow_zero=True)

    if not isinstance(ck["enabled"], bool):
        raise ConfigError("checkpoint.enabled", "expected bool.", ck["enabled"])
    checkpoint_options(ck)


def checkpoint_options(section: Any) -> CheckpointOptions:
    """`config.checkpoint` as the checkpoint callback's options (`enabled` aside).

    Raises:
      ConfigError: naming the first invalid field of the section.
    """
    values = {key: value for key, value in _as_dict(section).items() if key != "enabled"}
    values["save_freq"] = parse_save_freq(values.get("save_freq"))
    try:
        return CheckpointOptions(**values)
    except OptionError as e:
        raise ConfigError(f"checkpoint.{e.field}", e.reason, e.value) from None


def parse_save_freq(value: Any) -> str | int:
    """'epoch', or a positive number of steps given as an int or a string."""
    if value == "epoch":
        return "epoch"
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(
            "checkpoint.save_freq", "expected 'epoch' or a number of steps > 0.", value
        )
    return value


def validate(
    config: Any, *, num_devices: int | None = None, num_processes: int | None = None
) -> tuple[int, ...] | None:
    """Checks `config`; returns the mesh shape resolved against `num_devices`.

    Args:
      config: a ConfigDict (or nested dict) following configs/base.py.
      num_devices: the global device count, when known; checks mesh.shape.
      num_processes: the process count, when known; checks batch divisibility.

    Returns:
      The mesh shape with -1 resolved, or None when `num_devices` is None.

    Raises:
      ConfigError: one line naming the field and the received value.
    """
    cfg = _as_dict(config)
    for key in cfg:
        if key not in SECTIONS:
            raise ConfigError(
                key, f"unknown section; podfit configs have {list(SECTIONS)}.", cfg[key]
            )
    for section in SECTIONS:
        if section not in cfg:
            raise ConfigError(section, "missing section.", None)
    _check_types(cfg)
    mesh_shape = _check_mesh(cfg["mesh"], num_devices)
    _check_values(cfg, mesh_shape, num_processes)
    return mesh_shape
