"""What `OrbaxCheckpoint`'s constructor accepts: one check per argument.

Every failure is a `ValueError` naming the argument and echoing the received
value, e.g. `save_freq must be 'epoch' or a positive integer. Received:
save_freq=0`.
"""

from __future__ import annotations

from typing import Any

from checkpointing import metadata as meta
from checkpointing import writer

ON_WRITE_ERROR = ("raise", "warn")


def _positive_int_or_none(name: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer or None. Received: {name}={value!r}")


def _bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False. Received: {name}={value!r}")


def check(
    *,
    directory: Any,
    monitor: Any,
    verbose: Any,
    save_best_only: Any,
    mode: Any,
    save_freq: Any,
    initial_value_threshold: Any,
    max_to_keep: Any,
    save_on_background: Any,
    save_weights_only: Any,
    keep_best: Any,
    keep_period: Any,
    steps_per_epoch: Any,
    data_state: Any,
    metadata: Any,
    barrier_timeout_s: Any,
    snapshot: Any,
    on_write_error: Any,
    drop_page_cache: Any,
) -> None:
    """Raises ValueError for the first argument `OrbaxCheckpoint` cannot take."""
    if not isinstance(directory, str) and not hasattr(directory, "__fspath__"):
        raise ValueError(f"directory must be a path. Received: directory={directory!r}")
    if not str(directory):
        raise ValueError(f"directory must not be empty. Received: directory={directory!r}")
    if not isinstance(monitor, str) or not monitor:
        raise ValueError(f"monitor must be a metric name. Received: monitor={monitor!r}")
    if verbose not in (0, 1, 2) or isinstance(verbose, bool):
        raise ValueError(f"verbose must be 0 or 1. Received: verbose={verbose!r}")
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max'. Received: mode={mode!r}")
    if save_freq != "epoch" and (
        isinstance(save_freq, bool) or not isinstance(save_freq, int) or save_freq < 1
    ):
        raise ValueError(
            f"save_freq must be 'epoch' or a positive integer. Received: save_freq={save_freq!r}"
        )
    if initial_value_threshold is not None and not isinstance(
        initial_value_threshold, (int, float)
    ):
        raise ValueError(
            "initial_value_threshold must be a number or None. "
            f"Received: initial_value_threshold={initial_value_threshold!r}"
        )
    for name, value in (
        ("save_best_only", save_best_only),
        ("save_on_background", save_on_background),
        ("save_weights_only", save_weights_only),
        ("drop_page_cache", drop_page_cache),
    ):
        _bool(name, value)
    for name, value in (
        ("max_to_keep", max_to_keep),
        ("keep_best", keep_best),
        ("keep_period", keep_period),
        ("steps_per_epoch", steps_per_epoch),
    ):
        _positive_int_or_none(name, value)
    if data_state is not None and not callable(data_state):
        raise ValueError(
            f"data_state must be callable or None. Received: data_state={data_state!r}"
        )
    if metadata is not None:
        meta.check_json("metadata", metadata)
    if (
        isinstance(barrier_timeout_s, bool)
        or not isinstance(barrier_timeout_s, (int, float))
        or not barrier_timeout_s > 0
    ):
        raise ValueError(
            "barrier_timeout_s must be a positive number of seconds. "
            f"Received: barrier_timeout_s={barrier_timeout_s!r}"
        )
    if snapshot not in writer.SNAPSHOT_MODES:
        raise ValueError(
            f"snapshot must be one of {writer.SNAPSHOT_MODES}. Received: snapshot={snapshot!r}"
        )
    if on_write_error not in ON_WRITE_ERROR:
        raise ValueError(
            f"on_write_error must be one of {ON_WRITE_ERROR}. "
            f"Received: on_write_error={on_write_error!r}"
        )
