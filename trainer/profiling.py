"""Traces chosen training steps with `jax.profiler` (`trainer.profile_steps`)."""

from __future__ import annotations

import os
import shutil
import tempfile

import jax
import keras
from absl import logging
from etils import epath

from trainer.records import is_remote


def copy_tree(local: str, target: epath.Path) -> list[epath.Path]:
    """Copies the files under the local folder `local` to `target` (local or a URL)."""
    copied = []
    for root, _, names in os.walk(local):
        for name in sorted(names):
            source = os.path.join(root, name)
            destination = target / os.path.relpath(source, local)
            destination.parent.mkdir(parents=True, exist_ok=True)
            with open(source, "rb") as f:
                destination.write_bytes(f.read())
            copied.append(destination)
    return copied


class Profile(keras.callbacks.Callback):
    """Traces optimizer steps `start` to `stop` (both included, from 1) into `directory`.

    All in the training thread: `jax.profiler.start_trace` right before the
    first batch of step `start` is dispatched (`on_train_batch_begin`);
    `stop_trace` once the last batch of step `stop` has been dispatched and
    its work is done (the callback waits for that step's outputs, once), at
    the next dispatch, before the validation or at the end of the epoch or
    `fit`, whichever comes first (a `fit` that ends before `stop`, on
    preemption, ends the trace too). Earlier steps still running when the
    trace starts are in it. Each traced step is marked with a
    `jax.profiler.StepTraceAnnotation("train", step_num=step)`, from its
    dispatch to the next one, which the profiler's step views group by.

    The trace is `<directory>/plugins/profile/<time>/<host>.xplane.pb`
    (TensorBoard's profile plugin, XProf), `<host>.trace.json.gz` and
    `perfetto_trace.json.gz` (ui.perfetto.dev) beside it. jax.profiler writes
    local folders only: for a URL directory (gs://) it traces into a local
    temporary folder whose files are copied through etils.epath after it stops.

    Steps count as metrics.jsonl's do (optimizer updates: batches //
    `accumulation`), across resumes (the optimizer's batch counter is read
    once per `fit`).
    """

    def __init__(
        self,
        directory: epath.PathLike,
        *,
        start: int,
        stop: int,
        steps_per_execution: int = 1,
        accumulation: int = 1,
    ):
        super().__init__()
        if not 1 <= start <= stop:
            raise ValueError(f"expected 1 <= start <= stop. Received: ({start}, {stop})")
        self._steps = (start, stop)
        self._directory = epath.Path(directory)
        self._remote = is_remote(directory)
        # Batches (1-based) that make steps start..stop.
        self._first = (start - 1) * accumulation + 1
        self._last = stop * accumulation
        self._stride = steps_per_execution
        self._accumulation = accumulation
        self._state = "waiting"  # -> "tracing" -> "done"
        self._local: str | None = None
        self._annotation = None
        self._epoch_first = 0  # Batches before the epoch's first batch.
        self._dispatched = 0  # Batches dispatched in this fit, counted from the run's start.

    def on_train_begin(self, logs=None):
        optimizer = self.model.optimizer
        self._dispatched = int(getattr(optimizer, "_iterations", optimizer.iterations))

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_first = self._dispatched

    def on_train_batch_begin(self, batch, logs=None):
        first = self._epoch_first + batch + 1  # This dispatch's batches: first..last.
        last = first + self._stride - 1
        if self._state == "tracing" and first > self._last:
            self._stop()
        elif self._state == "waiting" and last >= self._first and first <= self._last:
            self._start()
        self._dispatched = last
        if self._state == "tracing":
            self._end_annotation()
            self._annotation = jax.profiler.StepTraceAnnotation(
                "train", step_num=last // self._accumulation
            )
            self._annotation.__enter__()

    def on_test_begin(self, logs=None):
        if self._state == "tracing" and self._dispatched >= self._last:
            self._stop()

    def on_epoch_end(self, epoch, logs=None):
        self.on_test_begin()

    def on_train_end(self, logs=None):
        if self._state == "tracing":
            self._stop()

    def _end_annotation(self) -> None:
        if self._annotation is not None:
            self._annotation.__exit__(None, None, None)
            self._annotation = None

    def _start(self) -> None:
        if self._remote:
            self._local = tempfile.mkdtemp(prefix="podfit_profile_")
        else:
            self._directory.mkdir(parents=True, exist_ok=True)
            self._local = os.fspath(self._directory)
        jax.profiler.start_trace(self._local, create_perfetto_trace=True)
        self._state = "tracing"

    def _stop(self) -> None:
        self._end_annotation()
        # The outputs of the last step dispatched, which the JAX trainer keeps
        # between steps (not `self.model`: that would sync them into the variables).
        jax.block_until_ready(getattr(self._model, "_jax_state", None))
        self._state = "done"
        jax.profiler.stop_trace()
        if self._remote:
            copy_tree(self._local, self._directory)
            shutil.rmtree(self._local, ignore_errors=True)
        logging.info("profile of steps %d-%d written to %s", *self._steps, self._directory)
