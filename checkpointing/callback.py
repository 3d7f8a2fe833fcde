"""`OrbaxCheckpoint`: Keras' Orbax callback, async and multi-process safe."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import keras
from absl import logging
from keras.src.callbacks.monitor_callback import MonitorCallback
from keras.src.saving import saving_lib
from keras.src.utils import io_utils
from orbax.checkpoint import v1 as ocp

from checkpointing import arguments, layout, manifest, pagecache, retention, writer
from checkpointing import metadata as meta
from checkpointing.coordination import (
    Coordinator,
    enable_orbax_coordination_barriers,
    next_instance,
)


def _scalar_logs(logs: Mapping[str, Any] | None) -> dict[str, float]:
    out = {}
    for key, value in (logs or {}).items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue  # Non-scalar logs are not metrics.
        if math.isfinite(number):
            out[key] = number
    return out


class OrbaxCheckpoint(MonitorCallback):
    """Saves one atomic Orbax checkpoint per global step, in the background.

    A drop-in for `keras.callbacks.OrbaxCheckpoint` (same arguments, same
    meaning; directories load with `keras.saving.load_model(directory)` and
    `model.load_weights(directory)`), with these differences:

    - Step directories are named by the global step
      (`model.optimizer.iterations`), also for `save_freq="epoch"`; an integer
      `save_freq` saves when the global step is a multiple of it, so a resumed
      run keeps the same save points.
    - `fit` blocks only for a snapshot of the state; the Orbax save runs on a
      background thread. If a save is due while the previous one is still
      being written, `fit` waits for it (queue depth 1: no save is dropped).
    - A failed write raises `CheckpointWriteError` in the training thread (the
      next batch end with one process; the next save or the end of training,
      on every process, with several). With `on_write_error="warn"` it is
      logged and warned about instead, and training goes on (see below).
    - Each step also stores progress, the data position, the best value so
      far, user metadata, the topology and library versions (see
      `layout.py`). A new callback on a directory with steps resumes `best`.
    - After each commit, each process checksums the files it wrote and
      process 0 writes `<step>/podfit/manifest.json` (size and CRC-32 per
      file, see `manifest.py`), which `restore` and `restore_latest`
      verify; failing to write it is a write failure.
    - `on_train_end` leaves the final state committed (unless
      `save_best_only`) and returns only when all writes are durable.
    - Right before each write, the previous step's files are dropped from
      the page cache, so that the write reuses that memory
      (`drop_page_cache`).

    Example:

    ```python
    callback = checkpointing.OrbaxCheckpoint("/tmp/ckpt", save_freq=100, max_to_keep=3)
    model.fit(dataset, epochs=10, callbacks=[callback])
    restored = checkpointing.restore_latest("/tmp/ckpt", model)
    ```

    Args:
        directory: Root directory of the steps (local path or `gs://...`).
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
        keep_best: Also keep the best N steps by `monitor`.
        keep_period: Also keep, for good, every step that is a multiple of N.
        steps_per_epoch: If given, progress (epoch, step in epoch) is computed
            from the global step; else from `fit`'s counters.
        data_state: Called at each save in the training thread; returns the
            JSON-able data position to store.
        metadata: JSON-able dict stored in every step (e.g. the config).
        barrier_timeout_s: Timeout of every barrier and cross-process wait.
        snapshot: "auto" (device copy if it fits, else host), "device" or
            "host".
        drop_page_cache: Right before each write, the kernel is asked to
            drop from the host's page cache the files of the previous
            committed step (the one this callback wrote last; at the first
            write, the latest in the directory, e.g. the one a resume read),
            so that the write reuses that memory at once (`pagecache.py`;
            local paths, where `os.posix_fadvise` exists). Each process drops
            the files it wrote, process 0 also the shared ones. The latest
            step stays cached. If dropping fails (an `OSError`), an absl
            warning is logged and the write goes on: the step is unaffected.
        on_write_error: What a failed write (disk full, permission denied,
            ...) does. "raise" (default): `CheckpointWriteError` in the
            training thread, on every process, and `fit` stops; committed
            steps are untouched. "warn": the failure is logged
            (`absl.logging.warning`) and warned about (`warnings.warn`, at the
            next batch end, save or end of training) naming the step and the
            error; that step is not committed, committed steps are untouched,
            training goes on and the next due save is attempted as usual (the
            final save of `on_train_end` too, even at the failed step). The
            failed steps of the latest fit are in `failed_steps`. With several processes,
            "warn" expects every process to see the failure (a shared file
            system that is full or read-only fails everywhere): a failure on
            one process only is not published to the others, whose barriers
            in that save then time out (`barrier_timeout_s`, or Orbax's own
            300 s coordination timeout) and fail there, so that they warn and
            go on too, late. Not tested with several processes.
            Either way, when Orbax could not create a step directory, some of
            its threads wait for it up to Orbax's 300 s coordination timeout,
            and a normal interpreter exit waits for them.

    Raises:
        ValueError: For an invalid argument (the message echoes it).
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
        steps_per_epoch: int | None = None,
        data_state: Callable[[], dict] | None = None,
        metadata: dict | None = None,
        barrier_timeout_s: float = 300.0,
        snapshot: writer.SnapshotMode = "auto",
        on_write_error: str = "raise",
        drop_page_cache: bool = True,
    ):
        arguments.check(
            directory=directory,
            monitor=monitor,
            verbose=verbose,
            save_best_only=save_best_only,
            mode=mode,
            save_freq=save_freq,
            initial_value_threshold=initial_value_threshold,
            max_to_keep=max_to_keep,
            save_on_background=save_on_background,
            save_weights_only=save_weights_only,
            keep_best=keep_best,
            keep_period=keep_period,
            steps_per_epoch=steps_per_epoch,
            data_state=data_state,
            metadata=metadata,
            barrier_timeout_s=barrier_timeout_s,
            snapshot=snapshot,
            on_write_error=on_write_error,
            drop_page_cache=drop_page_cache,
        )
        super().__init__(monitor, mode, initial_value_threshold)
        self.directory = layout.root(directory)
        self.verbose = verbose
        self.save_best_only = save_best_only
        self.save_freq = save_freq
        self.max_to_keep = max_to_keep
        self.save_on_background = save_on_background
        self.save_weights_only = save_weights_only
        self.keep_best = keep_best
        self.keep_period = keep_period
        self.steps_per_epoch = steps_per_epoch
        self.data_state = data_state
        self.metadata = dict(metadata or {})
        self.barrier_timeout_s = float(barrier_timeout_s)
        self.snapshot = snapshot
        self.on_write_error = on_write_error
        self.drop_page_cache = drop_page_cache
        self.checkpointer: ocp.training.Checkpointer | None = None
        self._instance = next_instance()
        self._runs = 0
        self._writer: writer.BackgroundWriter | None = None
        self._cached_step: int | None = None

    # -- fit hooks -----------------------------------------------------------

    def on_train_begin(self, logs=None):
        model = self.model
        self._resolve_monitor_op()
        coordinator = Coordinator.create(
            self.directory, self._instance, self._runs, self.barrier_timeout_s
        )
        self._runs += 1
        self._coordinator = coordinator
        if coordinator.multiprocess:
            enable_orbax_coordination_barriers()
        self._say = io_utils.print_msg if self.verbose and coordinator.process_index == 0 else None
        self.checkpointer = self._new_checkpointer()
        # Committed steps by this package's definition (a step-named directory
        # without Orbax's step metadata is not one).
        committed = layout.committed_steps(self.directory)
        latest = committed[-1] if committed else None
        self._last_saved_step = None if latest is None else latest.step
        # The step whose pages the next write drops (see `drop_page_cache`).
        self._cached_step = None if latest is None else latest.step
        self._global_step = int(model.optimizer.iterations)
        if latest is not None and latest.step > self._global_step:
            warnings.warn(
                f"{self.directory} holds step {latest.step}, later than this model's "
                f"step {self._global_step}: restore it first (checkpointing.restore_latest) "
                "or use another directory.",
                stacklevel=2,
            )
        if latest is not None:
            record = layout.read_record(latest.path)
            stored = None if record is None else record.callback_state.get("best")
            if stored is not None and record.callback_state.get("monitor") == self.monitor:
                self.best = stored  # Resume: the run's best so far wins.
        self._epoch = 0
        self._batches_in_epoch = 0
        self._epoch_done = False
        self._topology = meta.current_topology(model.get_state_tree())
        self._versions = meta.current_versions()
        self._config_json = (
            None if self.save_weights_only else saving_lib._serialize_model_as_json(model)[0]
        )
        self._writer = writer.BackgroundWriter(
            coordinator, on_error=self.on_write_error, label=self.directory
        )

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._batches_in_epoch = 0
        self._epoch_done = False

    def on_train_batch_end(self, batch, logs=None):
        added = batch + 1 - self._batches_in_epoch
        self._batches_in_epoch = batch + 1
        self._global_step += added
        if not self._coordinator.multiprocess:
            # With several processes, failures surface at the next save or at
            # the end, where all processes check them together.
            self._writer.raise_if_failed()
        self._writer.warn_failures()
        if self.save_freq != "epoch" and (
            self._global_step // self.save_freq > (self._global_step - added) // self.save_freq
        ):
            self._save(logs)

    def on_epoch_end(self, epoch, logs=None):
        self._epoch_done = True
        if not self._coordinator.multiprocess:
            self._writer.raise_if_failed()
        self._writer.warn_failures()
        if self.save_freq == "epoch":
            self._save(logs)

    def on_train_end(self, logs=None):
        self._writer.wait()
        if not self.save_best_only:
            self._save(logs, final=True)
        self._writer.wait()
        self._writer.warn_failures()
        step = self._last_saved_step if self._last_saved_step is not None else -1
        self._coordinator.barrier(f"train_end_{self._instance}_{self._runs}", step)
        self._coordinator.raise_if_peer_failed()
        self.checkpointer.close()

    @property
    def failed_steps(self) -> list[int]:
        """Steps whose write failed with on_write_error="warn", in order."""
        return [] if self._writer is None else self._writer.failed_steps

    def _new_checkpointer(self) -> ocp.training.Checkpointer:
        return ocp.training.Checkpointer(
            self.directory,
            context=layout.orbax_context(
                barrier_timeout_s=self.barrier_timeout_s,
                barrier_prefix=f"{layout.BARRIER_PREFIX}{self._instance}",
            ),
            preservation_policy=retention.preservation_policy(
                max_to_keep=self.max_to_keep,
                keep_best=self.keep_best,
                keep_period=self.keep_period,
                monitor=self.monitor,
                minimize=self.monitor_op is not keras.ops.greater,
            ),
            save_decision_policy=ocp.training.save_decision_policies.FixedIntervalPolicy(1),
            # Uncommitted `<step>.orbax-checkpoint-tmp*` directories left by a
            # crash or a failed write: process 0 deletes them before its
            # first save (never listed or restored in the meantime).
            cleanup_tmp_directories=True,
        )

    def wait_until_finished(self) -> None:
        """Blocks until the write in flight is durable; raises its failure."""
        if self._writer is not None:
            self._writer.wait()
            self._writer.warn_failures()

    # -- saving --------------------------------------------------------------

    def _resolve_monitor_op(self) -> None:
        if self.monitor_op is not None:
            return
        try:
            self._set_monitor_op()
        except ValueError:
            if self.save_best_only or self.keep_best is not None:
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
        self._writer.wait()  # Queue depth 1; raises earlier failures everywhere.
        self._writer.warn_failures()
        model = self.model  # Syncs the JAX state into the variables.
        step = int(model.optimizer.iterations)
        self._global_step = step
        if step == self._last_saved_step and step not in self.failed_steps:
            return  # Saved already (a failed save, with "warn", is retried).
        if any(c.step == step for c in self.checkpointer.checkpoints):
            # Committed steps are never overwritten (retention alone deletes).
            warnings.warn(
                f"{self.directory} already holds a step {step}; not saving over it.",
                stacklevel=2,
            )
            return
        metrics = _scalar_logs(logs)
        current = metrics.get(self.monitor)
        if self.save_best_only and not final:
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
        if self.save_weights_only:
            state = {k: state[k] for k in ("trainable_variables", "non_trainable_variables")}
        payload = {
            layout.PYTREE: writer.snapshot(state, self.snapshot),
            layout.RECORD: record.to_json(),
        }
        if self._config_json is not None:
            payload[layout.MODEL_CONFIG] = {"config": self._config_json}
        self._last_saved_step = step
        self._writer.submit(step, lambda: self._write(step, payload, metrics), self._reopen)
        if self._say is not None:
            self._say(f"\nOrbaxCheckpoint: saving step {step} to {self.directory}")
        if not self.save_on_background:
            self._writer.wait()

    def _reopen(self) -> None:
        """After a failed write with on_write_error="warn", on the writer thread.

        Orbax's checkpointer keeps a failed save's error and raises it again
        at its next save: go on with a fresh one (the old one is dropped, not
        closed: closing waits for its stuck background work).
        """
        try:
            self.checkpointer = self._new_checkpointer()
        except Exception as e:  # noqa: BLE001 - the next save retries.
            logging.warning("checkpointing: could not reopen %s: %r", self.directory, e)

    def _write(self, step: int, payload: dict, metrics: dict[str, float]) -> None:
        """The whole save and commit; runs on the writer thread."""
        if self.drop_page_cache and self._cached_step is not None:
            # Now, not after the previous commit: memory left free for a second
            # or two is handed back by some virtual machines (pagecache.py).
            pagecache.drop_or_warn(
                layout.step_dir(self.directory, self._cached_step),
                self._coordinator.process_index,
            )
        self.checkpointer.save_checkpointables(step, payload, force=True, metrics=metrics or None)
        self._cached_step = step  # Committed here; dropped before the next write.
        self._coordinator.barrier(f"committed{self._instance}", step)
        # Every process has committed: the step is whole on the shared file
        # system. Dying before the manifest leaves the step usable, "unverified".
        manifest.write_shared(layout.step_dir(self.directory, step), step, self._coordinator)
