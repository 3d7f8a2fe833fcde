"""`CheckpointOptions`: the callback's settings, checked in one place.

The fields are those of `config.checkpoint` (configs/base.py) but `enabled`,
and the keyword arguments of `OrbaxCheckpoint` but the run's own values
(`directory`, `steps_per_epoch`, `data_state`, `metadata`). Every check is in
`__post_init__`: a failure is an `OptionError` (a `ValueError`) that names the
field and echoes the value, e.g. `save_freq must be 'epoch' or a positive
integer. Received: save_freq=0`.

Imports nothing heavy (no jax, keras or orbax), so that `configs.validation`
checks the config section with it before any device work.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

MODES = ("auto", "min", "max")
SNAPSHOT_MODES = ("auto", "device", "host")


class OptionError(ValueError):
    """An option holds a value the callback cannot take.

    Attributes:
        field: The option's name.
        reason: What it must be, e.g. "must be True or False.".
        value: The value received.
    """

    def __init__(self, field: str, reason: str, value: Any):
        self.field, self.reason, self.value = field, reason, value
        super().__init__(f"{field} {reason} Received: {field}={value!r}")


def check_json(name: str, value: Any) -> None:
    """Raises OptionError unless `value` is a JSON-able dict.

    Args:
        name: The argument's name, for the message.
        value: The value to check.
    """
    if not isinstance(value, Mapping):
        raise OptionError(name, "must be a dict.", value)
    try:
        json.dumps(value, allow_nan=True)
    except (TypeError, ValueError) as e:
        raise OptionError(name, f"must be JSON-serializable ({e}).", value) from e


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class CheckpointOptions:
    """How `OrbaxCheckpoint` saves: frozen, checked when built.

    Attributes:
        monitor: The metric for `save_best_only` and `keep_best`.
        verbose: 0 silent, 1 one line per save (process 0 only).
        save_best_only: Save only when `monitor` improves (decided on process
            0 and agreed by all).
        mode: "auto", "min" or "max": whether `monitor` should fall or rise.
        save_freq: "epoch", or an integer N: save when the global step is a
            multiple of N.
        initial_value_threshold: The initial best value, unless the directory
            already holds one.
        max_to_keep: Keep the latest N steps; None keeps all.
        save_on_background: If False, `fit` also waits for the write.
        save_weights_only: Save only trainable and non-trainable variables and
            no model config (`load_model` then cannot rebuild the model).
        keep_best: Also keep the best N steps by `monitor`; None: no such rule.
        keep_period: Also keep, for good, every step that is a multiple of N;
            None: no such rule.
        barrier_timeout_s: Timeout of every barrier and cross-process wait.
        snapshot: "auto" (device copy if it fits, else host), "device" or
            "host".

    Example:

    ```python
    options = CheckpointOptions(save_freq=100, max_to_keep=3, keep_period=1000)
    callback = checkpointing.OrbaxCheckpoint("/tmp/ckpt", options=options)
    ```

    Raises:
        OptionError: A `ValueError` naming the first invalid field.
    """

    monitor: str = "val_loss"
    verbose: int = 0
    save_best_only: bool = False
    mode: str = "auto"
    save_freq: str | int = "epoch"
    initial_value_threshold: float | None = None
    max_to_keep: int | None = 1
    save_on_background: bool = True
    save_weights_only: bool = False
    keep_best: int | None = None
    keep_period: int | None = None
    barrier_timeout_s: float = 300.0
    snapshot: str = "auto"

    def __post_init__(self):
        if not isinstance(self.monitor, str) or not self.monitor:
            raise OptionError("monitor", "must be a metric name.", self.monitor)
        if not _is_int(self.verbose) or self.verbose not in (0, 1, 2):
            raise OptionError("verbose", "must be 0 or 1.", self.verbose)
        for name in ("save_best_only", "save_on_background", "save_weights_only"):
            if not isinstance(getattr(self, name), bool):
                raise OptionError(name, "must be True or False.", getattr(self, name))
        for name, allowed in (("mode", MODES), ("snapshot", SNAPSHOT_MODES)):
            if getattr(self, name) not in allowed:
                raise OptionError(name, f"must be one of {allowed}.", getattr(self, name))
        if self.save_freq != "epoch" and (not _is_int(self.save_freq) or self.save_freq < 1):
            raise OptionError("save_freq", "must be 'epoch' or a positive integer.", self.save_freq)
        threshold = self.initial_value_threshold
        if threshold is not None and (
            isinstance(threshold, bool) or not isinstance(threshold, int | float)
        ):
            raise OptionError("initial_value_threshold", "must be a number or None.", threshold)
        for name in ("max_to_keep", "keep_best", "keep_period"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                raise OptionError(name, "must be a positive integer or None.", value)
        timeout = self.barrier_timeout_s
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
            raise OptionError("barrier_timeout_s", "must be a positive number of seconds.", timeout)
