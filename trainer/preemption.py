"""Stop at one step all processes agree on after a SIGTERM.

With several processes, JAX's preemption service (part of the coordination
service, on by default) catches SIGTERM on any process and agrees on a step
(`multihost_utils.reached_preemption_sync_point`). A lone process uses its
own SIGTERM handler. Training stops after that step; the checkpoint
callback's `on_train_end` then commits it, and the trainer raises
`Preempted` (the launcher exits with its documented code, 75).
"""

from __future__ import annotations

import signal
import threading

import jax
import keras
from absl import logging
from jax.experimental import multihost_utils


class Preempted(Exception):
    """Training stopped at `step` because of a preemption notice."""

    def __init__(self, step: int):
        super().__init__(f"preempted at step {step}; its checkpoint is committed")
        self.step = step


class PreemptionWatch(keras.callbacks.Callback):
    """Sets `model.stop_training` at the agreed step.

    Built once per run (before the model compiles, so a SIGTERM during
    compilation or restore is not lost) and passed to every `fit` call.
    """

    def __init__(self):
        super().__init__()
        self.stopped_at: int | None = None
        self._step: int | None = None
        self._signalled = threading.Event()
        self._multi = jax.process_count() > 1
        if not self._multi and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame):
        del frame
        logging.warning("signal %d received: stopping at the next step with a checkpoint", signum)
        self._signalled.set()

    def on_train_begin(self, logs=None):
        # Read once per run, then counted on the host (no device sync per
        # step), never reset: JAX's sync manager needs a number that rises by
        # one per call on every process alike, also across `fit` calls and
        # with steps_per_execution (one call per execution) or accumulation.
        if self._step is None:
            self._step = int(self.model.optimizer.iterations)

    def on_test_begin(self, logs=None):
        # Validation inside `fit`: a SIGTERM now is acted on at the next
        # training step's sync point (or, after the last epoch, by the end).
        logging.info("validation begins after step %d", self._step)

    def on_train_batch_begin(self, batch, logs=None):
        # Here, not in on_train_batch_end: Keras runs that on a thread pool
        # (async dispatch), out of step order, while this runs in the training
        # thread before each step, in order on every process. The step about
        # to run is the sync point's number; stop_training set now ends `fit`
        # right after that step, on every process alike.
        self._step += 1
        if self._multi:
            reached = multihost_utils.reached_preemption_sync_point(self._step)
        else:
            reached = self._signalled.is_set()
        if reached:
            logging.warning("preemption: all processes stop after step %d", self._step)
            self.stopped_at = self._step
            self.model.stop_training = True
