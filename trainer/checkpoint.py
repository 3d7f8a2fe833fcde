"""`checkpointing.OrbaxCheckpoint`, with its per-batch work moved off Keras' thread pool.

Keras dispatches `on_train_batch_end` asynchronously (a thread pool, after
the training thread has moved on) only if every callback that overrides it
is `async_safe`; otherwise it converts the logs to floats after every step,
which makes the host wait for the device each step. A save must snapshot
the state of exactly the step it is named after, so the save decision of
batch `b` runs in the training thread: at the start of batch `b + 1`
(`on_train_batch_begin`, before that step is dispatched), and for the last
batch of an epoch in `on_epoch_end` (Keras runs it after all batch ends).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping

import checkpointing


class _MetricsOfTheLastStep(Mapping):
    """The model's metric results, read from the device only if a save asks.

    Equal to the logs Keras passes to `on_train_batch_end` of that step (its
    train step returns `get_metrics_result()` too).
    """

    def __init__(self, callback: checkpointing.OrbaxCheckpoint):
        self._callback = callback
        self._values: dict | None = None

    def _read(self) -> dict:
        if self._values is None:
            # `callback.model` syncs the JAX state into the variables first.
            self._values = dict(self._callback.model.get_metrics_result())
        return self._values

    def __getitem__(self, key):
        return self._read()[key]

    def __iter__(self) -> Iterator:
        return iter(self._read())

    def __len__(self) -> int:
        return len(self._read())


class AsyncSafeCheckpoint(checkpointing.OrbaxCheckpoint):
    """The same saves as `OrbaxCheckpoint`, decided in the training thread.

    Same arguments; see `checkpointing.OrbaxCheckpoint`.
    """

    async_safe = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()
        self._last_ended: int | None = None  # Set on Keras' thread pool.
        self._decided = 0  # Batches of the epoch whose save was decided.

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        self._last_ended, self._decided = None, 0

    def on_train_batch_begin(self, batch, logs=None):
        # Batches before `batch` have run; the state is theirs.
        self._decide(batch - 1)

    def on_train_batch_end(self, batch, logs=None):
        with self._lock:  # Possibly several at once, out of order.
            if self._last_ended is None or batch > self._last_ended:
                self._last_ended = batch

    def on_epoch_end(self, epoch, logs=None):
        with self._lock:
            last = self._last_ended
        if last is not None:
            self._decide(last)
        super().on_epoch_end(epoch, logs)

    def _decide(self, batch: int) -> None:
        if batch < self._decided:
            return
        self._decided = batch + 1
        super().on_train_batch_end(batch, _MetricsOfTheLastStep(self))
