"""One trainer: config -> distribution -> data -> model -> restore -> fit."""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass

import jax
import keras
import numpy as np
from absl import logging
from etils import epath

import checkpointing
from checkpointing import layout
from checkpointing.coordination import Coordinator
from configs import validation
from trainer import console, data, mesh, models, optim
from trainer.callbacks import BoundStepsInFlight, MetricsLogger, StepEvents, SyncEvalSteps
from trainer.preemption import Preempted, PreemptionWatch
from trainer.profiling import Profile
from trainer.progress import Progress
from trainer.tensorboard import TensorBoardLogger

# Same program on every process: the n-th digest is the n-th on all.
_digest_calls = itertools.count()
# Training steps dispatched but not finished, on CPU with several devices (BoundStepsInFlight).
_CPU_STEPS_IN_FLIGHT = 1


@dataclass(frozen=True)
class TrainResult:
    """What a finished (or already complete) run reports."""

    start_step: int
    final_step: int
    weights_sha256: str
    history: dict


def _local_shards_digest(model: keras.Model) -> str:
    """SHA-256 of the shards this process holds the first replica of.

    Each shard counts once in the job (`replica_id == 0`), with its variable,
    its global index, dtype and bytes; only this process' memory is read.
    """
    digest = hashlib.sha256()
    for variable in model.weights:
        value = variable.value
        shards = [s for s in value.addressable_shards if s.replica_id == 0]
        for shard in sorted(shards, key=lambda s: [(i.start, i.stop) for i in s.index]):
            index = [(i.start, i.stop) for i in shard.index]
            digest.update(f"{variable.path}|{index}|{value.dtype}|".encode())
            digest.update(np.ascontiguousarray(np.asarray(shard.data)).tobytes())
    return digest.hexdigest()


def weights_digest(model: keras.Model, timeout_s: float = 300.0) -> str:
    """One SHA-256 of all weights, the same on every process.

    Each process hashes the shards it holds the first replica of; process 0
    gathers these digests (not the weights) through the coordination
    service, combines them in process order and shares the result: O(1)
    coordination calls per process (process 0: one wait, one directory read). Equal weights under the
    same topology (mesh and processes) give equal digests, so the digest
    compares an interrupted and an uninterrupted run, or processes.

    A collective: every process must call it, in the same order.
    """
    coordinator = Coordinator(
        jax.process_index(), jax.process_count(), "podfit/weights_digest", timeout_s
    )
    call = next(_digest_calls)
    parts = coordinator.gather("shards", call, _local_shards_digest(model))
    combined = hashlib.sha256("".join(parts).encode()).hexdigest()
    return coordinator.share("sha256", call, combined)


def _checkpoint_callback(
    config, directory: epath.Path, steps_per_epoch: int, data_state
) -> keras.callbacks.Callback:
    return checkpointing.OrbaxCheckpoint(
        str(directory),
        options=validation.checkpoint_options(config.checkpoint),
        steps_per_epoch=steps_per_epoch,
        # The data position: batches are a pure function of (seed, global step).
        data_state=data_state,
        metadata={"config": config.to_dict()},
    )


def build_callbacks(
    config,
    workdir: epath.Path,
    preemption: PreemptionWatch,
    *,
    is_primary: bool,
    data_state=None,
    data_wait: data.DataWait | None = None,
) -> list[keras.callbacks.Callback]:
    """The callbacks of every `fit`; all async-safe, so Keras' async dispatch stays on.

    Whatever must see the exact step's state (the preemption sync point,
    the save decision) runs in synchronous hooks (`on_train_batch_begin`,
    `on_epoch_end`); `on_train_batch_end` runs on Keras' thread pool.
    """
    tr = config.trainer
    total_steps = tr.epochs * tr.steps_per_epoch  # Batches.
    accumulation = config.optimizer.gradient_accumulation_steps
    callbacks = []
    cpu_devices = jax.default_backend() == "cpu" and jax.local_device_count() > 1
    if cpu_devices:  # The CPU simulation only, and first; see BoundStepsInFlight.
        callbacks.append(BoundStepsInFlight(_CPU_STEPS_IN_FLIGHT))
    callbacks += [
        preemption,
        # Before the loggers: it adds `learning_rate` to the logs they write.
        optim.LearningRateLogger(optim.schedule(config.optimizer, total_steps)),
    ]
    if config.checkpoint.enabled:
        # Before the loggers: a logger that raises on Keras' thread pool makes
        # Keras skip the callbacks after it, and a save waits for its batch's logs.
        callbacks.append(
            _checkpoint_callback(config, workdir / "checkpoints", tr.steps_per_epoch, data_state)
        )
    callbacks += [
        MetricsLogger(
            workdir / "metrics.jsonl",
            log_every=tr.log_every,
            total_steps=total_steps // accumulation,
            enabled=is_primary,
            steps_per_execution=tr.steps_per_execution,
            accumulation=accumulation,
        ),
        # Every process: the run's event log (launcher/events.py).
        StepEvents(tr.log_every, accumulation, tr.steps_per_execution, data_wait=data_wait),
    ]
    if cpu_devices and jax.process_count() > 1:
        callbacks.append(SyncEvalSteps())
    if tr.tensorboard and is_primary:
        # After the checkpoint callback: its end (the final save) comes first.
        seq_len = config.data.kwargs.get("seq_len")
        callbacks.append(
            TensorBoardLogger(
                workdir / "tensorboard",
                log_every=tr.log_every,
                global_batch_size=config.data.global_batch_size,
                tokens_per_example=seq_len if isinstance(seq_len, int) else None,
                steps_per_execution=tr.steps_per_execution,
                accumulation=accumulation,
            )
        )
    if tr.profile_steps and (is_primary or tr.profile_all_processes):
        callbacks.append(
            Profile(
                workdir / "profile" / f"process_{jax.process_index()}",
                start=tr.profile_steps[0],
                stop=tr.profile_steps[1],
                steps_per_execution=tr.steps_per_execution,
                accumulation=accumulation,
            )
        )
    # Last: its on_train_end comes after the checkpoint callback's (the last commit).
    callbacks.append(
        Progress(
            total_steps=total_steps // accumulation,
            log_every=tr.log_every,
            enabled=is_primary,
            epochs=tr.epochs,
            steps_per_execution=tr.steps_per_execution,
            accumulation=accumulation,
        )
    )
    return callbacks


def _fit_segments(start_step: int, epochs: int, steps_per_epoch: int):
    """(initial_epoch, epochs, steps_per_epoch, first_step) of each fit call.

    A run resumed mid-epoch first finishes that epoch, then runs whole ones.
    """
    epoch, offset = divmod(start_step, steps_per_epoch)
    if offset:
        yield epoch, epoch + 1, steps_per_epoch - offset, start_step
        epoch += 1
    if epoch < epochs:
        yield epoch, epochs, steps_per_epoch, epoch * steps_per_epoch


def train(config, workdir: epath.PathLike) -> TrainResult:
    """Trains `config` in `workdir`, resuming from its latest checkpoint.

    Every process calls this with the same config. `workdir` may be local or
    a bucket URL (gs://bucket/run): every file goes through `etils.epath`.
    """
    workdir = epath.Path(layout.root(workdir))  # Absolute when local: Orbax wants that.
    process_index, process_count = jax.process_index(), jax.process_count()
    is_primary = process_index == 0
    mesh_shape = validation.validate(
        config, num_devices=jax.device_count(), num_processes=process_count
    )
    # One device array for the mesh and for the rows each process feeds.
    devices = mesh.device_array(mesh_shape, config.mesh.axis_names, config.mesh.dcn_shape)
    distribution = mesh.build_distribution(
        mesh_shape,
        config.mesh.axis_names,
        config.mesh.layout_rules,
        devices,
        auto_min_size=config.mesh.auto_min_size,
        model_layout=models.layout_map_fn(config.model),  # Before the model is built.
    )
    shard = mesh.data_shard(mesh.process_grid(devices), config.mesh.axis_names, process_index)
    splits = data.load_splits(config.data)
    tr = config.trainer

    preemption = PreemptionWatch()
    with distribution.scope():
        keras.utils.set_random_seed(tr.seed)  # Same seed everywhere: same initial weights.
        model = models.build(config)
        position = data.position(config.data, splits)
        data_wait = data.DataWait()  # The steps' wait for batches, for the event log.
        # Before the restore: the TensorBoard logger reports it.
        callbacks = build_callbacks(
            config,
            workdir,
            preemption,
            is_primary=is_primary,
            # Batches, not optimizer steps (they differ with accumulation).
            data_state=lambda: {**position, "step": int(model.optimizer._iterations)},
            data_wait=data_wait,
        )
        start_step = 0
        ckpt_dir = workdir / "checkpoints"
        if config.checkpoint.enabled:
            restored = checkpointing.restore_latest(str(ckpt_dir), model)
            if restored is not None:
                # Refuses data settings that would change the sequence of batches.
                start_step = data.resume_step(
                    restored.data_state,
                    position,
                    step=int(model.optimizer._iterations),  # Batches (see optim.py).
                    allow_change=tr.allow_data_change,
                )
                (console.info if is_primary else logging.info)(
                    "resumed from step %d (epoch %d, step %d of it)",
                    start_step,
                    restored.progress.epoch,
                    restored.progress.step_in_epoch,
                )
        if is_primary:
            # After the restore: a relaunch refused for another model's
            # checkpoints (CheckpointMismatchError) leaves the file as it was.
            (workdir / "config.json").write_text(
                json.dumps(config.to_dict(), indent=2, default=str)
            )

        validation_data = None
        if tr.validation_steps:
            validation_data = data.validation_dataset(
                splits.validation,
                global_batch_size=config.data.global_batch_size,
                shard=shard,
                num_steps=tr.validation_steps,
            )
        history: dict = {}
        for initial_epoch, epochs, steps, first_step in _fit_segments(
            start_step, tr.epochs, tr.steps_per_epoch
        ):
            train_ds = data.train_dataset(
                splits.train,
                seed=config.data.seed,
                global_batch_size=config.data.global_batch_size,
                shard=shard,
                start_step=first_step,
                num_steps=(epochs - initial_epoch) * steps,
                reading=data.Reading.of(config.data),
                wait=data_wait,
            )
            h = model.fit(
                train_ds,
                initial_epoch=initial_epoch,
                epochs=epochs,
                steps_per_epoch=steps,
                validation_data=validation_data,
                validation_steps=tr.validation_steps or None,
                callbacks=callbacks,
                shuffle=False,  # The pipeline shuffles by (seed, step).
                verbose=0,  # Progress (process 0) shows it.
            )
            for key, values in h.history.items():
                history.setdefault(key, []).extend(float(v) for v in values)
            if preemption.stopped_at is not None:
                # The checkpoint callback's on_train_end has committed this step.
                raise Preempted(int(model.optimizer.iterations))

        final_step = int(model.optimizer.iterations)
        digest = weights_digest(model)
    result = TrainResult(
        start_step=start_step, final_step=final_step, weights_sha256=digest, history=history
    )
    (workdir / f"final_p{process_index}.json").write_text(json.dumps(result.__dict__, indent=2))
    logging.info("finished at step %d; weights sha256 %s", final_step, digest[:16])
    return result
