"""config.optimizer -> a Keras optimizer with its learning-rate schedule.

Schedules count optimizer steps (updates), not batches: with
`gradient_accumulation_steps=k` Keras applies an update every k batches but
evaluates a schedule at its raw batch counter (`optimizer._iterations`), so
`Schedule` divides that counter by k itself.
"""

from __future__ import annotations

import math
import threading

import keras
import numpy as np
from keras import ops

SCHEDULES = ("constant", "cosine", "linear")


def _rate(step, *, base, warmup, decay, alpha, kind, xp):
    """The learning rate at optimizer step `step` (a float), with `xp` = numpy or keras.ops."""
    if kind == "constant" and not warmup:
        return base + 0.0 * step
    warm = base * xp.minimum(1.0, (step + 1.0) / max(warmup, 1))
    progress = xp.clip((step - warmup) / max(decay, 1), 0.0, 1.0)
    if kind == "cosine":
        factor = alpha + (1.0 - alpha) * 0.5 * (1.0 + xp.cos(math.pi * progress))
    elif kind == "linear":
        factor = 1.0 - (1.0 - alpha) * progress
    else:
        factor = 1.0 + 0.0 * progress
    return xp.where(step < warmup, warm, base * factor)


@keras.saving.register_keras_serializable(package="podfit")
class Schedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup over `warmup_steps`, then constant, cosine or linear decay.

    Warmup reaches `learning_rate` at step `warmup_steps - 1`; the decay runs
    over the next `decay_steps` steps down to `alpha * learning_rate` and
    stays there. Steps are optimizer steps: the batch counter Keras passes in
    is divided by `accumulation_steps`.
    """

    def __init__(
        self,
        learning_rate: float,
        *,
        kind: str = "constant",
        warmup_steps: int = 0,
        decay_steps: int = 1,
        alpha: float = 0.0,
        accumulation_steps: int = 1,
    ):
        self.learning_rate = float(learning_rate)
        self.kind = kind
        self.warmup_steps = int(warmup_steps)
        self.decay_steps = int(decay_steps)
        self.alpha = float(alpha)
        self.accumulation_steps = int(accumulation_steps)

    def _kwargs(self):
        return dict(
            base=self.learning_rate,
            warmup=self.warmup_steps,
            decay=self.decay_steps,
            alpha=self.alpha,
            kind=self.kind,
        )

    def __call__(self, step):
        step = ops.cast(ops.floor_divide(step, self.accumulation_steps), "float32")
        return _rate(step, xp=ops, **self._kwargs())

    def at(self, optimizer_step: int) -> float:
        """The rate at `optimizer_step`, computed on the host (no device work)."""
        return float(_rate(np.float64(optimizer_step), xp=np, **self._kwargs()))

    def get_config(self):
        return {
            "learning_rate": self.learning_rate,
            "kind": self.kind,
            "warmup_steps": self.warmup_steps,
            "decay_steps": self.decay_steps,
            "alpha": self.alpha,
            "accumulation_steps": self.accumulation_steps,
        }


def schedule(opt_config, total_batches: int) -> Schedule:
    """The schedule of `config.optimizer` for a run of `total_batches` batches.

    `decay_steps=0` decays over the rest of the run after the warmup.
    """
    k = opt_config.gradient_accumulation_steps
    decay = opt_config.decay_steps or max(total_batches // k - opt_config.warmup_steps, 1)
    return Schedule(
        opt_config.learning_rate,
        kind=opt_config.schedule,
        warmup_steps=opt_config.warmup_steps,
        decay_steps=decay,
        alpha=opt_config.alpha,
        accumulation_steps=k,
    )


def build(opt_config, total_batches: int) -> keras.optimizers.Optimizer:
    """The optimizer of `config.optimizer`, its rate following `schedule`."""
    rate = schedule(opt_config, total_batches)
    if rate.kind == "constant" and not rate.warmup_steps:
        rate = rate.learning_rate  # A float: the model then loads without podfit's classes.
    common = dict(
        learning_rate=rate,
        global_clipnorm=opt_config.global_clipnorm or None,
        # Keras takes None for "no accumulation" and refuses 1.
        gradient_accumulation_steps=opt_config.gradient_accumulation_steps
        if opt_config.gradient_accumulation_steps > 1
        else None,
    )
    if opt_config.name == "adamw":
        return keras.optimizers.AdamW(weight_decay=opt_config.weight_decay, **common)
    if opt_config.name == "adam":
        return keras.optimizers.Adam(**common)
    return keras.optimizers.SGD(**common)


class LearningRateLogger(keras.callbacks.Callback):
    """Adds `learning_rate` to the logs of every batch and epoch.

    The rate of the latest batch's update comes from the schedule on the
    host and a host-side batch count (read from the optimizer once per
    `fit`), so it costs no device read per step and is safe for Keras'
    asynchronous callback dispatch. Put it before the callbacks that write
    the logs.
    """

    async_safe = True

    def __init__(self, rate: Schedule):
        super().__init__()
        self._rate = rate
        self._first = 0
        self._epoch_first = 0
        self._last = 0
        self._lock = threading.Lock()  # Batch ends run on Keras' thread pool, several at once.

    def _batches(self) -> int:
        optimizer = self.model.optimizer
        # The raw batch counter (`iterations` is floor-divided by accumulation).
        return int(
            optimizer._iterations if hasattr(optimizer, "_iterations") else optimizer.iterations
        )

    def on_train_begin(self, logs=None):
        self._first = self._last = self._batches()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_first = self._last

    def _add(self, logs, batches: int) -> None:
        if logs is not None and batches > 0:
            logs["learning_rate"] = self._rate.at((batches - 1) // self._rate.accumulation_steps)

    def on_train_batch_end(self, batch, logs=None):
        # Dispatched calls may run out of order: each uses its own `batch`.
        batches = self._epoch_first + batch + 1
        with self._lock:
            self._last = max(self._last, batches)
        self._add(logs, batches)

    def on_epoch_end(self, epoch, logs=None):
        self._add(logs, self._last)
