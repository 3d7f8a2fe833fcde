"""Callbacks the trainer adds to `fit`: metric lines and progress on host 0."""

from __future__ import annotations

import json
import time
from pathlib import Path

import keras
from absl import logging


def _floats(logs) -> dict:
    return {k: float(v) for k, v in (logs or {}).items()}


class MetricsLogger(keras.callbacks.Callback):
    """Appends metrics as JSON lines to `path` and logs progress.

    Built with `enabled=False` on every process but the first, so the host-0
    decision is taken once, not in the loop.
    """

    def __init__(self, path: Path, *, log_every: int, total_steps: int, enabled: bool):
        super().__init__()
        self._path = Path(path)
        self._log_every = log_every
        self._total = total_steps
        self._enabled = enabled
        self._start = time.monotonic()

    def _write(self, record: dict) -> None:
        with self._path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def _step(self) -> int:
        return int(self.model.optimizer.iterations)

    def on_train_batch_end(self, batch, logs=None):
        if not self._enabled or (batch + 1) % self._log_every:
            return
        step = self._step()
        record = {"step": step, "time": round(time.monotonic() - self._start, 3), **_floats(logs)}
        self._write(record)
        logging.info(
            "step %d/%d %s",
            step,
            self._total,
            " ".join(f"{k}={v:.4f}" for k, v in _floats(logs).items()),
        )

    def on_epoch_end(self, epoch, logs=None):
        if not self._enabled:
            return
        record = {"epoch": epoch + 1, "step": self._step(), **_floats(logs)}
        self._write(record)
        logging.info(
            "epoch %d done: %s",
            epoch + 1,
            " ".join(f"{k}={v:.4f}" for k, v in _floats(logs).items()),
        )


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
