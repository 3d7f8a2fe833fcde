"""`OrbaxCheckpoint`: Keras' Orbax callback, async and multi-process safe."""

from __future__ import annotations

import dataclasses
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import keras
from keras.src.callbacks.monitor_callback import MonitorCallback
from keras.src.saving import saving_lib
from keras.src.utils import io_utils
from orbax.checkpoint import v1 as ocp

from checkpointing import events, layout, manifest, retention, writer
from checkpointing import metadata as meta
from checkpointing.coordination import (
    Coordinator,
    enable_orbax_coordination_barriers,
    next_instance,
)
from checkpointing.options import CheckpointOptions, OptionError


class OrbaxCheckpoint(MonitorCallback):
    """Saves one atomic Orbax checkpoint per global step, in the background.

    A drop-in for `keras.callbacks.OrbaxCheckpoint` (same arguments, same
    meaning; directories load with `keras.saving.load_model(directory)` and
    `model.load_weights(directory)`), with these differences:

    - Step directories are named by the global step
      (`model.optimizer.iterations`), also for `save_freq="epoch"`; an integer
      `save_freq` saves when the global step is a multiple of it, so a resumed
      run keeps the same save points.
    - It is `async_safe`: Keras' async dispatch of batch ends stays on (no
      device wait per step); saves are decided in the training thread.
    - `fit` blocks only for a snapshot of the state; the Orbax save runs on a
      background thread. If a save is due while the previous one is still
      being written, `fit` waits for it (queue depth 1: no save is dropped).
    - A failed write raises `CheckpointWriteError` in the training thread (the
      next batch end with one process; the next save or the end of training,
      on every process, with several); committed steps are untouched.
    - Each step also stores progress, the data position, the best value so
      far, user metadata, the topology and library versions (see
      `layout.py`). A new callback on a directory with steps resumes `best`.
    - After each commit, each process checksums the files it wrote and
      process 0 writes `<step>/podfit/manifest.json` (size and CRC-32 per
      file, see `manifest.py`), which `restore` and `restore_latest`
      verify; failing to write it is a write failure.
    - `on_train_end` leaves the final state committed (unless
      `save_best_only`) and returns only when all writes are durable.
    - The settings may come as one `CheckpointOptions` (`options=`), e.g.
      built from a config section, instead of the keyword arguments.

    Example:

    ```python
    callback = checkpointing.OrbaxCheckpoint("/tmp/ckpt", save_freq=100, max_to_keep=3)
    model.fit(dataset, epochs=10, callbacks=[callback])
    restored = checkpointing.restore_latest("/tmp/ckpt", model)
    ```

    Args:
        directory: Root directory of the steps (local path or `gs://...`).
        monitor, verbose, save_best_only, mode, save_freq,
            initial_value_threshold, max_to_keep, save_on_background,
            save_weights_only, keep_best, keep_period, barrier_timeout_s,
            snapshot: The options, as `keras.callbacks.OrbaxCheckpoint` takes
            the first nine; see `CheckpointOptions` for each.
        options: All of the above at once; then none of them may be given.
        steps_per_epoch: If given, progress (epoch, step in epoch) is computed
            from the global step; else from `fit`'s counters.
        data_state: Called at each save in the training thread; returns the
            JSON-able data position to store.
        metadata: JSON-able dict stored in every step (e.g. the config).

    Raises:
        ValueError: For an invalid argument (the message names it and echoes
            the value).
    """

    def __init__(
        self,
        directory: str,
        monitor: str = "val_loss",
        verbose: int = 0,
        save_best_only: bool = False,
        mode: str = "auto",
        save_freq: str | int = "epoch",
        initial_value_threshold: float | None = None,
        max_to_keep: int | None = 1,
        save_on_background: bool = True,
        save_weights_only: bool = False,
        *,
        keep_best: int | None = None,
        keep_period: int | None = None,
        barrier_timeout_s: float = 300.0,
        snapshot: writer.SnapshotMode = "auto",
        options: CheckpointOptions | None = None,
        steps_per_epoch: int | None = None,
        data_state: Callable[[], dict] | None = None,
        metadata: dict | None = None,
    ):
        arguments = locals()
        given = {f.name: arguments[f.name] for f in dataclasses.fields(CheckpointOptions)}
        if options is None:
            options = CheckpointOptions(**given)
        elif given != dataclasses.asdict(CheckpointOptions()):
            changed = {k: v for k, v in given.items() if v != getattr(CheckpointOptions, k)}
            raise ValueError(f"pass options or its fields, not both. Received: {changed}")
        if not isinstance(directory, str) and not hasattr(directory, "__fspath__"):
            raise OptionError("directory", "must be a path.", directory)
        if not str(directory):
            raise OptionError("directory", "must not be empty.", directory)
        if steps_per_epoch is not None and (
            isinstance(steps_per_epoch, bool)
            or not isinstance(steps_per_epoch, int)
            or steps_per_epoch < 1
        ):
            raise OptionError(
                "steps_per_epoch", "must be a positive integer or None.", steps_per_epoch
            )
        if data_state is not None and not callable(data_state):
            raise OptionError("data_state", "must be callable or None.", data_state)
        if metadata is not None:
            meta.check_json("metadata", metadata)
        super().__init__(options.monitor, options.mode, options.initial_value_threshold)
        self.options = options
        self.directory = layout.root(directory)
        self.steps_per_epoch = steps_per_epoch
        self.data_state = data_state
        self.metadata = dict(metadata or {})
        self.checkpointer: ocp.training.Checkpointer | None = None
        self._instance = next_instance()
        self._runs = 0
        self._writer: writer.BackgroundWriter | None = None
        # Filled by `on_train_batch_end` (Keras' thread pool), read in the training thread.
        self._ended = threading.Condition()
        self._last_ended: int | None = None
        self._batch_logs: dict[int, Mapping[str, Any] | None] = {}

    # Keras dispatches `on_train_batch_end` on a thread pool, after the
    # training thread has moved on, when every callback is async-safe; else it
    # converts the logs to floats after every step, a device sync per step. A
    # save must snapshot exactly the step it is named after, so the decision
    # for batch b runs in the training thread: at the start of the next batch
    # (before its step is dispatched) and, for an epoch's last batch, in
    # `on_epoch_end` (after Keras waited for every batch end).
    async_safe = True

    # -- fit hooks -----------------------------------------------------------

    def on_train_begin(self, logs=None):
        model = self.model
        self._resolve_monitor_op()
        coordinator = Coordinator.create(
            self.directory, self._instance, self._runs, self.options.barrier_timeout_s
        )
        self._runs += 1
        self._coordinator = coordinator
        if coordinator.multiprocess:
            enable_orbax_coordination_barriers()
        self._say = (
            io_utils.print_msg if self.options.verbose and coordinator.process_index == 0 else None
        )
        self.checkpointer = self._new_checkpointer()
        # Committed steps by this package's definition (a step-named directory
        # without Orbax's step metadata is not one), as process 0 lists them:
        # a process that skipped a save another one makes would hang the save.
        committed = coordinator.committed_steps(self.directory)
        latest = committed[-1] if committed else None
        self._last_saved_step = latest
        self._global_step = int(model.optimizer.iterations)
        # With gradient accumulation the optimizer updates once per k batches:
        # `iterations` counts updates (the step names), `_iterations` batches.
        self._accumulation = int(getattr(model.optimizer, "gradient_accumulation_steps", 0) or 1)
        self._batches = int(getattr(model.optimizer, "_iterations", model.optimizer.iterations))
        if latest is not None and latest > self._global_step:
            warnings.warn(
                f"{self.directory} holds step {latest}, later than this model's "
                f"step {self._global_step}: restore it first (checkpointing.restore_latest) "
                "or use another directory.",
                stacklevel=2,
            )
        if latest is not None:
            # Every process reads it: Orbax's load ends at a barrier of all processes.
            stored = self._stored_best(latest)
            if stored is not None:
                self.best = stored  # Resume: the run's best so far wins.
        # Steps never written over (retention alone deletes), from the same listing.
        self._committed_at_start = set(committed)
        self._epoch = 0
        self._batches_in_epoch = 0
        self._epoch_done = False
        self._topology = meta.current_topology(model.get_state_tree())
        self._versions = meta.current_versions()
        self._config_json = (
            None
            if self.options.save_weights_only
            else saving_lib._serialize_model_as_json(model)[0]
        )
        self._writer = writer.BackgroundWriter(coordinator)

    def _stored_best(self, step: int) -> float | None:
        """The best value stored with `step`, if it was for this callback's monitor."""
        record = layout.read_record(layout.step_dir(self.directory, step))
        if record is None or record.callback_state.get("monitor") != self.monitor:
            return None
        return record.callback_state.get("best")

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._batches_in_epoch = 0
        self._epoch_done = False
        with self._ended:
            self._last_ended, self._batch_logs = None, {}

    def on_train_batch_begin(self, batch, logs=None):
        self._decide(batch - 1)  # The batches before `batch` have run; the state is theirs.

    def on_train_batch_end(self, batch, logs=None):
        with self._ended:  # Possibly several at once, out of order.
            if self._last_ended is None or batch > self._last_ended:
                self._last_ended = batch
            self._batch_logs[batch] = logs
            self._ended.notify_all()

    def _logs_of(self, batch: int, *, due: bool) -> Mapping[str, Any] | None:
        """The logs Keras passed to `on_train_batch_end(batch)`; older ones are dropped.

        If a save is `due`, waits for that batch end (Keras' thread pool
        converts the logs once the step has run: a device wait at save steps
        only). Else returns None without waiting.
        """
        with self._ended:
            if due and not self._ended.wait_for(
                lambda: batch in self._batch_logs, self.options.barrier_timeout_s
            ):
                # Keras stops a batch end at the first callback that raises
                # (on its thread pool) and raises that error one batch later.
                raise TimeoutError(
                    f"the logs of batch {batch} did not arrive within "
                    f"{self.options.barrier_timeout_s}s: a callback listed before "
                    "this one may have raised in on_train_batch_end (Keras then skips "
                    "the callbacks after it for that batch, and raises its error one batch later). "
                    f"Received: barrier_timeout_s={self.options.barrier_timeout_s}"
                )
            logs = self._batch_logs.get(batch)
            for old in [b for b in self._batch_logs if b <= batch]:
                del self._batch_logs[old]
            return logs

    def _decide(self, batch: int) -> None:
        """Counts the batches up to `batch` of this epoch and saves if one is due."""
        if batch < self._batches_in_epoch:
            return
        added = batch + 1 - self._batches_in_epoch
        self._batches_in_epoch = batch + 1
        self._batches += added
        before, self._global_step = self._global_step, self._batches // self._accumulation
        if not self._coordinator.multiprocess:
            # With several processes, failures surface at the next save or at
            # the end, where all processes check them together.
            self._writer.raise_if_failed()
        due = self.options.save_freq != "epoch" and (
            self._global_step // self.options.save_freq > before // self.options.save_freq
        )
        logs = self._logs_of(batch, due=due)
        if due:
            self._save(logs)

    def on_epoch_end(self, epoch, logs=None):
        with self._ended:
            last = self._last_ended
        if last is not None:
            self._decide(last)
        self._epoch_done = True
        if not self._coordinator.multiprocess:
            self._writer.raise_if_failed()
        if self.options.save_freq == "epoch":
            self._save(logs)

    def on_train_end(self, logs=None):
        self._wait_for_writes()
        if not self.options.save_best_only:
            self._save(logs, final=True)
        self._wait_for_writes()
        self._coordinator.raise_if_peer_failed()  # Not a barrier a failed peer may never reach.
        step = self._last_saved_step if self._last_saved_step is not None else -1
        self._coordinator.barrier(f"train_end_{self._instance}_{self._runs}", step)
        self._coordinator.raise_if_peer_failed()
        self.checkpointer.close()

    def _wait_for_writes(self) -> None:
        """Waits for the write in flight; emits `save_waited` if there was one."""
        busy, started = self._writer.busy, time.monotonic()
        self._writer.wait()  # Idle: raises a failure, if any, at once.
        if busy:
            events.emit(
                "save_waited",
                step=self._last_saved_step,
                ms=round((time.monotonic() - started) * 1000, 3),
            )

    def _new_checkpointer(self) -> ocp.training.Checkpointer:
        return layout.no_preemption_queries(
            ocp.training.Checkpointer(
                self.directory,
                context=layout.orbax_context(
                    barrier_timeout_s=self.options.barrier_timeout_s,
                    barrier_prefix=f"{layout.BARRIER_PREFIX}{self._instance}",
                ),
                preservation_policy=retention.preservation_policy(
                    max_to_keep=self.options.max_to_keep,
                    keep_best=self.options.keep_best,
                    keep_period=self.options.keep_period,
                    monitor=self.monitor,
                    minimize=self.monitor_op is not keras.ops.greater,
                ),
                save_decision_policy=ocp.training.save_decision_policies.FixedIntervalPolicy(1),
                # Left by a crash: process 0 deletes them before its first save.
                cleanup_tmp_directories=True,
            )
        )

    def wait_until_finished(self) -> None:
        """Blocks until the write in flight is durable; raises its failure."""
        if self._writer is not None:
            self._writer.wait()

    def _resolve_monitor_op(self) -> None:
        if self.monitor_op is not None:
            return
        try:
            self._set_monitor_op()
        except ValueError:
            if self.options.save_best_only or self.options.keep_best is not None:
                raise
            # The monitor is only informational here; "best" is not tracked.
            self.monitor_op = None

    def _progress(self, step: int) -> meta.Progress:
        if self.steps_per_epoch:
            epoch, in_epoch = divmod(step, self.steps_per_epoch)
        elif self._epoch_done:
            epoch, in_epoch = self._epoch + 1, 0
        else:
            epoch, in_epoch = self._epoch, self._batches_in_epoch
        return meta.Progress(global_step=step, epoch=epoch, step_in_epoch=in_epoch)

    def _save(self, logs: Mapping[str, Any] | None, final: bool = False) -> None:
        started, wall_start = time.monotonic(), time.time()
        self._writer.wait()  # Queue depth 1; raises earlier failures everywhere.
        self._coordinator.raise_if_peer_failed()  # Also a peer's failure this process missed.
        model = self.model  # Syncs the JAX state into the variables.
        step = int(model.optimizer.iterations)
        if step == self._last_saved_step:
            return  # Saved already.
        if step in self._committed_at_start:
            # Committed steps are never overwritten (retention alone deletes).
            warnings.warn(
                f"{self.directory} already holds a step {step}; not saving over it.",
                stacklevel=2,
            )
            return
        metrics = meta.scalar_logs(logs)
        current = metrics.get(self.monitor)
        if self.options.save_best_only and not final:
            improved = current is not None and bool(self._is_improvement(current, self.best))
            if current is None:
                warnings.warn(
                    f"Can save best model only with {self.monitor} available, "
                    f"skipping save at step {step}.",
                    stacklevel=2,
                )
            # Process 0 decides; everyone follows (no device collective).
            if not self._coordinator.agree("improved", step, improved):
                return
            self.best = current
        elif current is not None and self.monitor_op is not None:
            if bool(self._is_improvement(current, self.best)):
                self.best = current
        events.emit("save_begun", step=step)
        data_state = {} if self.data_state is None else self.data_state()
        meta.check_json("data_state", data_state)
        record = meta.StepRecord(
            progress=self._progress(step),
            data_state=data_state,
            callback_state={
                "best": None if self.best is None else float(self.best),
                "monitor": self.monitor,
                "mode": self.mode,
            },
            metadata=self.metadata,
            topology=self._topology,
            versions=self._versions,
            metrics=metrics,
            time=time.time(),
        )
        state = model.get_state_tree()
        if self.options.save_weights_only:
            state = {k: state[k] for k in ("trainable_variables", "non_trainable_variables")}
        payload = {
            layout.PYTREE: writer.snapshot(state, self.options.snapshot),
            layout.RECORD: record.to_json(),
        }
        if self._config_json is not None:
            payload[layout.MODEL_CONFIG] = {"config": self._config_json}
        self._last_saved_step = step
        self._writer.submit(step, lambda: self._write(step, payload, metrics, wall_start))
        if self._say is not None:
            self._say(f"\nOrbaxCheckpoint: saving step {step} to {self.directory}")
        if not self.options.save_on_background:
            self._writer.wait()
        events.emit("save_blocked", step=step, ms=round((time.monotonic() - started) * 1000, 3))

    def _write(
        self, step: int, payload: dict, metrics: dict[str, float], wall_start: float
    ) -> None:
        """The whole save and commit; runs on the writer thread."""
        self.checkpointer.save_checkpointables(step, payload, force=True, metrics=metrics or None)
        self._coordinator.barrier(f"committed_{self._instance}_{self._runs}", step)
        # Every process has committed: the step is whole on the shared file
        # system. Dying before the manifest leaves the step usable, "unverified".
        nbytes = manifest.write_shared(
            layout.step_dir(self.directory, step), step, self._coordinator
        )
        events.emit(
            "save_committed",
            step=step,
            write_s=round(time.time() - wall_start, 3),
            bytes=nbytes,
        )
