"""Callbacks the trainer adds to `fit`: metric lines and progress on host 0."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

import keras
from absl import logging
from etils import epath

from checkpointing import events
from checkpointing.metadata import scalar_logs
from trainer.records import JsonLines

if TYPE_CHECKING:
    from trainer.data import DataWait


class StepRecords(keras.callbacks.Callback):
    """Calls `_emit(record, batch)` for the batches `_wants` (by default every
    `log_every`), in step order, and `_emit_epoch(record)` at each epoch's
    end; the common part of the loggers and the progress line.

    A record is `{"step": ..., **metrics}` (`_record`), an epoch's
    `{"epoch": ..., "step": ..., **metrics}` with the epoch's logs (the
    validation metrics among them).

    Async-safe: Keras runs `on_train_batch_end` on a thread pool (it has
    converted the logs to floats there, so the training thread never waits
    for the device), possibly several at once and out of order. The step is
    counted on the host (the optimizer's counter is read once per `fit`), and
    records are emitted under a lock in step order: a batch's record waits
    until every earlier batch of the epoch has ended. `on_epoch_end` runs in
    the training thread after all batch ends of the epoch.

    Keras calls `on_train_batch_end` once per `steps_per_execution` batches
    (with the last one's index); `step` counts optimizer updates (batches //
    `accumulation`, the optimizer's gradient accumulation steps).

    Built with `enabled=False` on the processes that log nothing, so the
    decision is taken once, not in the loop.
    """

    async_safe = True

    def __init__(
        self,
        *,
        log_every: int,
        enabled: bool,
        steps_per_execution: int = 1,
        accumulation: int = 1,
    ):
        super().__init__()
        self._stride = steps_per_execution
        self._accumulation = accumulation
        self._log_every = log_every
        self._enabled = enabled
        self._lock = threading.Lock()
        self._epoch_start = 0  # Batches before the epoch's first batch.
        self._ended: set[int] = set()  # Batches ended, not yet passed in order.
        self._pending: dict[int, dict] = {}  # Records waiting for earlier batches.
        self._next = steps_per_execution - 1  # The next batch end (in the epoch) to pass.

    def _record(self, batches: int, logs) -> dict:
        """The record of the batch that brings the run to `batches` batches."""
        return {"step": batches // self._accumulation, **scalar_logs(logs, finite=False)}

    def _wants(self, batch: int) -> bool:
        """Whether the end of `batch` (in the epoch) makes a record."""
        return not (batch + 1) % self._log_every

    def _emit(self, record: dict, batch: int) -> None:
        """Called under the lock, in step order; `batch` is the batch in the epoch."""
        raise NotImplementedError

    def _emit_epoch(self, record: dict) -> None:
        """Called in the training thread, after every record of the epoch."""
        raise NotImplementedError

    def on_train_begin(self, logs=None):
        if self._enabled:
            optimizer = self.model.optimizer
            # The batch counter (`iterations` counts updates: batches // accumulation).
            self._epoch_start = int(getattr(optimizer, "_iterations", optimizer.iterations))

    def on_epoch_begin(self, epoch, logs=None):
        with self._lock:
            self._ended, self._pending, self._next = set(), {}, self._stride - 1

    def on_train_batch_end(self, batch, logs=None):
        if not self._enabled:
            return
        with self._lock:
            self._ended.add(batch)
            if self._wants(batch):
                self._pending[batch] = self._record(self._epoch_start + batch + 1, logs)
            while self._next in self._ended:  # Every batch up to here has ended.
                self._ended.discard(self._next)
                passed, record = self._next, self._pending.pop(self._next, None)
                self._next += self._stride
                if record is not None:
                    self._emit(record, passed)

    def on_epoch_end(self, epoch, logs=None):
        if not self._enabled:
            return
        with self._lock:
            # Keras has waited for every batch end of the epoch: all passed.
            self._epoch_start += self._next - (self._stride - 1)
            step = self._epoch_start // self._accumulation
        self._emit_epoch({"epoch": epoch + 1, "step": step, **scalar_logs(logs, finite=False)})


class MetricsLogger(StepRecords):
    """Appends metrics as JSON lines to `path` (local or gs://) and logs progress.

    A line every `log_every` batches and one per epoch, in step order (see
    StepRecords); built with `enabled=False` on every process but the first.
    """

    def __init__(
        self,
        path: epath.PathLike,
        *,
        log_every: int,
        total_steps: int,
        enabled: bool,
        steps_per_execution: int = 1,
        accumulation: int = 1,
    ):
        super().__init__(
            log_every=log_every,
            enabled=enabled,
            steps_per_execution=steps_per_execution,
            accumulation=accumulation,
        )
        self._sink = JsonLines(path) if enabled else None
        self._total = total_steps
        self._start = time.monotonic()

    def _write(self, record: dict) -> None:
        self._sink.write(record)

    def _emit(self, record: dict, batch: int) -> None:
        metrics = {k: v for k, v in record.items() if k != "step"}
        # When written (in step order), so that times rise with the steps.
        self._write(
            {"step": record["step"], "time": round(time.monotonic() - self._start, 3), **metrics}
        )
        logging.info(
            "step %d/%d %s",
            record["step"],
            self._total,
            " ".join(f"{k}={v:.4f}" for k, v in metrics.items()),
        )

    def _emit_epoch(self, record: dict) -> None:
        self._write(record)
        self._sink.flush()  # A remote file is rewritten here at least.
        metrics = {k: v for k, v in record.items() if k not in ("epoch", "step")}
        logging.info(
            "epoch %d done: %s",
            record["epoch"],
            " ".join(f"{k}={v:.4f}" for k, v in metrics.items()),
        )


class StepEvents(StepRecords):
    """Emits the trainer's events (`checkpointing.events`) for the run's event log.

    `fit_begun` and `eval_begun`/`eval_done` in the training thread;
    `compiled` (the first step of the process) and `step` (every `log_every`
    optimizer steps) as `StepRecords` passes the batch ends, in step order,
    from Keras' thread pool once the step's logs are ready: no device wait is
    added. Each carries the time its batch ended; the last step of each `fit`
    is emitted at its end. Every process runs it (each writes its own log).

    With `data_wait`, `compiled` and `step` carry `data_wait_s`: the seconds
    the training thread has waited for batches so far (read when the event
    is emitted, so it may count a few batches in flight after the step).
    """

    def __init__(
        self,
        log_every: int,
        accumulation: int = 1,
        steps_per_execution: int = 1,
        data_wait: DataWait | None = None,
    ):
        super().__init__(
            log_every=log_every,
            enabled=True,
            steps_per_execution=steps_per_execution,
            accumulation=accumulation,
        )
        self._data_wait = data_wait
        self._compiled = False
        self._emitted = -1  # The last step emitted.
        self._latest: tuple[int, float] | None = None  # (step, time) of the latest batch passed.

    def _wants(self, batch: int) -> bool:
        return True  # Every batch end: the step events count optimizer steps.

    def _record(self, batches: int, logs) -> dict:
        return {"step": batches // self._accumulation, "time": time.time()}

    def _emit(self, record: dict, batch: int) -> None:
        step, ended_at = record["step"], record["time"]
        self._latest = (step, ended_at)
        if not self._compiled:
            self._compiled = True
            self._emitted = step
            self._step_event("compiled", step, ended_at)
        elif step // self._log_every > self._emitted // self._log_every:
            self._emitted = step
            self._step_event("step", step, ended_at)

    def _emit_epoch(self, record: dict) -> None:
        pass

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        events.emit("fit_begun", step=self._epoch_start // self._accumulation)

    def on_train_end(self, logs=None):
        with self._lock:  # Keras has waited for every batch end of this fit.
            if self._latest is not None and self._latest[0] > self._emitted:
                self._emitted = self._latest[0]
                self._step_event("step", *self._latest)

    def _step_event(self, kind: str, step: int, ended_at: float) -> None:
        if self._data_wait is None:
            events.emit(kind, step=step, time=ended_at)
        else:
            wait = round(self._data_wait.seconds, 6)
            events.emit(kind, step=step, time=ended_at, data_wait_s=wait)

    def _latest_step(self) -> int:
        with self._lock:
            return -1 if self._latest is None else self._latest[0]

    def on_test_begin(self, logs=None):
        events.emit("eval_begun", step=self._latest_step())

    def on_test_end(self, logs=None):
        events.emit("eval_done", step=self._latest_step())


class SyncEvalSteps(keras.callbacks.Callback):
    """Waits for each evaluation step before the next is dispatched.

    Keras dispatches evaluation steps asynchronously (it reads no per-batch
    logs), so many steps can be in flight. With several processes of
    several CPU devices each (the local simulation, gloo collectives), that
    hung at the end of validation: with 2 processes x 2 devices, 2 epochs
    and 38-39 validation steps, one process was still in an evaluation step
    while the other reduced the metrics (5 of 5 runs); with 1 device per
    process, or waiting for each step, it finished. Training steps are waited for
    already (the per-step callbacks read their logs).
    """

    def on_test_batch_end(self, batch, logs=None):
        import jax  # noqa: PLC0415

        jax.block_until_ready(logs)


class BoundStepsInFlight(keras.callbacks.Callback):
    """Before dispatching a training step, waits for the earlier ones to finish.

    For the CPU simulation only (several CPU devices in one process), not
    for accelerators. With Keras' async callback dispatch the training thread
    dispatches step after step, and Keras' thread pool converts each step's
    logs to floats (device-to-host copies) meanwhile. On CPU both compete for
    XLA's CPU thread pool with the collectives of the step running, whose
    participants must all get a thread: with 8 devices in one process the LM
    config's `fit` aborted in XLA ("Termination timeout for all reduce ...
    only 1 of them arrived", after 40 s), around step 30-50 of 80, also with
    every step waited for before the next (the copies still piled up). What
    ran through is what the per-step conversion in the training thread did:
    the next step is dispatched once the previous step's logs are converted.
    This callback restores that order on CPU, `max_in_flight` steps at once
    (1 is what ran), and keeps async dispatch on for the other callbacks. On
    accelerators the host must run ahead of the device; there this callback
    is not added.

    Must come first in the callback list: its `on_train_batch_end` (Keras'
    thread pool) then runs right after Keras converted the logs.
    """

    async_safe = True

    def __init__(self, max_in_flight: int = 1, timeout_s: float = 300.0):
        super().__init__()
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1. Received: max_in_flight={max_in_flight}")
        self._max = max_in_flight
        self._timeout_s = timeout_s
        self._done = threading.Condition()
        self._begun = 0
        self._ended = 0

    def on_train_begin(self, logs=None):
        with self._done:
            self._begun = self._ended = 0

    def on_train_batch_begin(self, batch, logs=None):
        import jax  # noqa: PLC0415

        # The previous step's outputs, which the JAX trainer keeps between
        # steps (not `self.model`: that would sync them into the variables).
        # Waiting on them raises a failed step here, in the training thread.
        state = getattr(self._model, "_jax_state", None)
        if state and self._begun:
            jax.block_until_ready(state["optimizer_variables"])
        with self._done:
            if not self._done.wait_for(
                lambda: self._begun - self._ended < self._max, timeout=self._timeout_s
            ):
                raise RuntimeError(
                    f"the logs of step {self._ended + 1} of this fit were not converted "
                    f"within {self._timeout_s}s (a callback on Keras' thread pool failed?)"
                )
            self._begun += 1

    def on_train_batch_end(self, batch, logs=None):
        with self._done:
            self._ended += 1
            self._done.notify_all()
