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
# The mesh.layout_rules entry (or whole value) for fully sharded data parallelism.
AUTO = "auto"
# The mesh.layout_rules entry for the model's own layouts (its factory's
# get_layout_map: KerasHub backbones), in that place among the rules.
BACKBONE = "backbone"
SECTIONS = ("mesh", "data", "model", "optimizer", "trainer", "checkpoint")
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("constant", "cosine", "linear")
DTYPE_POLICIES = ("float32", "mixed_bfloat16", "bfloat16")
# trainer/plugins.py's form of "package.module:function".
IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


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
            if (section, key) == ("mesh", "layout_rules") and cfg[section][key] == AUTO:
                continue  # The one string layout_rules takes.
            _same_type(f"{section}.{key}", cfg[section][key], default)

    for section, builtins in (("data", base.BUILTIN_DATA), ("model", base.BUILTIN_MODELS)):
        _check_keys(section, cfg[section], tuple(schema[section]))
        for key, default in schema[section].items():
            if key != "kwargs":
                _same_type(f"{section}.{key}", cfg[section][key], default)
        _check_name(f"{section}.name", cfg[section]["name"], builtins)
        kwargs = cfg[section]["kwargs"]
        if not isinstance(kwargs, Mapping) and not hasattr(kwargs, "to_dict"):
            raise ConfigError(
                f"{section}.kwargs", "expected a ConfigDict of keyword arguments.", kwargs
            )
        for key in _as_dict(kwargs):
            if not isinstance(key, str) or not key.isidentifier():
                raise ConfigError(f"{section}.kwargs", "keys must be argument names.", key)


def _check_name(field: str, name: Any, builtins: Sequence[str]) -> None:
    """A built-in name, or "package.module:function" (imported later, by the trainer)."""
    if isinstance(name, str) and ":" in name:
        if not IMPORT_PATH.match(name):
            raise ConfigError(field, "expected 'package.module:function'.", name)
    elif name not in builtins:
        raise ConfigError(
            field,
            f"unknown built-in; known: {sorted(builtins)}, or 'package.module:function'.",
            name,
        )


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


def _check_dcn_shape(dcn: tuple, shape: tuple[int, ...]) -> None:
    if dcn and (
        len(dcn) != len(shape) or any(isinstance(d, bool) or not isinstance(d, int) for d in dcn)
    ):
        raise ConfigError(
            "mesh.dcn_shape",
            f"expected () or {len(shape)} ints, one per mesh.shape entry (slices along each axis).",
            dcn,
        )
    if any(d < 1 for d in dcn):
        raise ConfigError("mesh.dcn_shape", "slice counts must be >= 1.", dcn)


def _check_mesh(mesh: dict, num_devices: int | None) -> tuple[int, ...] | None:
    """Returns the global mesh shape: mesh.shape (one slice) times mesh.dcn_shape."""
    shape, names = tuple(mesh["shape"]), tuple(mesh["axis_names"])
    dcn = tuple(mesh["dcn_shape"])
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
    rules = mesh["layout_rules"]
    for i, rule in enumerate((rules,) if isinstance(rules, str) else rules):
        field = f"mesh.layout_rules[{i}]"
        if isinstance(rule, str):
            if rule not in (AUTO, BACKBONE):
                raise ConfigError(
                    field,
                    f"expected a (regex, partition spec) pair, {AUTO!r} or {BACKBONE!r}.",
                    rule,
                )
            continue
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
    if mesh["auto_min_size"] < 0:
        raise ConfigError("mesh.auto_min_size", "must be >= 0 (elements).", mesh["auto_min_size"])
    _check_dcn_shape(dcn, shape)
    if num_devices is None:
        return None
    if not dcn:
        return resolve_mesh_shape(shape, num_devices)
    slices = math.prod(dcn)
    if num_devices % slices:
        raise ConfigError(
            "mesh.dcn_shape", f"{slices} slices do not divide {num_devices} devices.", dcn
        )
    per_slice = resolve_mesh_shape(shape, num_devices // slices)
    return tuple(s * d for s, d in zip(per_slice, dcn, strict=True))


def _check_values(cfg: dict, mesh_shape: tuple[int, ...] | None, num_processes: int | None) -> None:
    data, model, opt, tr, ck = (
        cfg[s] for s in ("data", "model", "optimizer", "trainer", "checkpoint")
    )
    batch = data["global_batch_size"]
    _positive("data.global_batch_size", batch)
    _positive("data.seed", data["seed"], allow_zero=True)
    _count("data.read_threads", data["read_threads"], minimum=1)
    _count("data.read_buffer", data["read_buffer"], minimum=1)
    _count("data.read_workers", data["read_workers"], minimum=0)
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
    _check_model(model)
    for key in ("epochs", "steps_per_epoch", "log_every"):
        _positive(f"trainer.{key}", tr[key])
    _positive("trainer.validation_steps", tr["validation_steps"], allow_zero=True)
    _positive("trainer.seed", tr["seed"], allow_zero=True)
    _check_trainer(tr, ck)
    _check_optimizer(opt, tr, ck)
    _check_profile_steps(tr, opt)

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


def _check_model(model: dict) -> None:
    if not IMPORT_PATH.match(model["loss"]) and not re.match(r"^\w+$", model["loss"]):
        raise ConfigError(
            "model.loss",
            "expected a Keras loss identifier or 'package.module:function'.",
            model["loss"],
        )
    for i, metric in enumerate(model["metrics"]):
        if not isinstance(metric, str) or not (
            IMPORT_PATH.match(metric) or re.match(r"^\w+$", metric)
        ):
            raise ConfigError(
                f"model.metrics[{i}]",
                "expected a Keras metric identifier or 'package.module:function'.",
                metric,
            )


def _count(field: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(field, f"expected an int >= {minimum}.", value)


def _steps_of(save_freq: Any) -> int | None:
    """save_freq as a number of steps, or None for 'epoch' (checked with the checkpoint)."""
    if isinstance(save_freq, str) and save_freq.strip().isdigit():
        return int(save_freq)
    return save_freq if isinstance(save_freq, int) and not isinstance(save_freq, bool) else None


def _check_optimizer(opt: dict, tr: dict, ck: dict) -> None:
    if opt["name"] not in OPTIMIZERS:
        raise ConfigError("optimizer.name", f"expected one of {OPTIMIZERS}.", opt["name"])
    _positive("optimizer.learning_rate", opt["learning_rate"])
    _positive("optimizer.weight_decay", opt["weight_decay"], allow_zero=True)
    _positive("optimizer.global_clipnorm", opt["global_clipnorm"], allow_zero=True)
    if opt["schedule"] not in SCHEDULES:
        raise ConfigError("optimizer.schedule", f"expected one of {SCHEDULES}.", opt["schedule"])
    _count("optimizer.warmup_steps", opt["warmup_steps"], minimum=0)
    _count("optimizer.decay_steps", opt["decay_steps"], minimum=0)
    if not 0 <= opt["alpha"] <= 1:
        raise ConfigError("optimizer.alpha", "must be in [0, 1].", opt["alpha"])
    k = opt["gradient_accumulation_steps"]
    _count("optimizer.gradient_accumulation_steps", k, minimum=1)
    if isinstance(tr["steps_per_epoch"], int) and tr["steps_per_epoch"] % k:
        raise ConfigError(
            "optimizer.gradient_accumulation_steps",
            f"must divide trainer.steps_per_epoch ({tr['steps_per_epoch']}), so that epochs end "
            "on an update.",
            k,
        )
    save_steps = _steps_of(ck["save_freq"])
    if save_steps is not None and save_steps > 0 and save_steps % k:
        raise ConfigError(
            "optimizer.gradient_accumulation_steps",
            f"must divide checkpoint.save_freq ({save_steps}), so that saves land on an update.",
            k,
        )
    total = tr["epochs"] * tr["steps_per_epoch"] // k
    if opt["schedule"] != "constant" and opt["warmup_steps"] >= total:
        raise ConfigError(
            "optimizer.warmup_steps",
            f"must be less than the run's optimizer steps ({total}).",
            opt["warmup_steps"],
        )


def _check_trainer(tr: dict, ck: dict) -> None:
    if tr["dtype_policy"] not in DTYPE_POLICIES:
        raise ConfigError(
            "trainer.dtype_policy", f"expected one of {DTYPE_POLICIES}.", tr["dtype_policy"]
        )
    n = tr["steps_per_execution"]
    _count("trainer.steps_per_execution", n, minimum=1)
    for key in ("steps_per_epoch", "log_every"):
        if tr[key] % n:
            raise ConfigError(
                "trainer.steps_per_execution",
                f"must divide trainer.{key} ({tr[key]}): callbacks see every {n}th step only.",
                n,
            )
    steps = _steps_of(ck["save_freq"])
    if steps is not None and steps > 0 and steps % n:
        raise ConfigError(
            "trainer.steps_per_execution",
            f"must divide checkpoint.save_freq ({steps}): callbacks see every {n}th step only.",
            n,
        )


def _check_profile_steps(tr: dict, opt: dict) -> None:
    steps = tr["profile_steps"]
    if not steps:
        return
    total = tr["epochs"] * tr["steps_per_epoch"] // opt["gradient_accumulation_steps"]
    if (
        len(steps) != 2
        or any(isinstance(s, bool) or not isinstance(s, int) for s in steps)
        or not 1 <= steps[0] <= steps[1] <= total
    ):
        raise ConfigError(
            "trainer.profile_steps",
            f"expected () or (start, stop) with 1 <= start <= stop <= the run's optimizer "
            f"steps ({total}).",
            steps,
        )


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
