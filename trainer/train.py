"""One trainer: config -> distribution -> data -> model -> restore -> fit."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import jax
import keras
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

import checkpointing
from configs import validation
from trainer import data, mesh, models, optim
from trainer.callbacks import MetricsLogger, SyncEvalSteps
from trainer.preemption import Preempted, PreemptionWatch


@dataclass(frozen=True)
class TrainResult:
    """What a finished (or already complete) run reports."""

    start_step: int
    final_step: int
    weights_sha256: str
    history: dict


def weights_digest(model: keras.Model) -> str:
    """SHA-256 of every variable's full value, gathered on each process.

    A collective: every process must call it. Equal digests on all processes
    and across runs mean bitwise-equal weights.
    """
    digest = hashlib.sha256()
    for variable in model.weights:
        value = np.asarray(multihost_utils.process_allgather(variable.value, tiled=True))
        digest.update(variable.path.encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()


def _checkpoint_callback(
    config, directory: Path, steps_per_epoch: int, data_state
) -> keras.callbacks.Callback:
    ck = config.checkpoint
    return checkpointing.OrbaxCheckpoint(
        directory=str(directory),
        monitor=ck.monitor,
        save_best_only=ck.save_best_only,
        mode=ck.mode,
        save_freq=validation.parse_save_freq(ck.save_freq),
        max_to_keep=ck.max_to_keep,
        save_on_background=ck.async_save,
        keep_best=ck.keep_best or None,
        keep_period=ck.keep_period or None,
        steps_per_epoch=steps_per_epoch,
        # The data position: batches are a pure function of (seed, global step).
        data_state=data_state,
        metadata={"config": config.to_dict()},
        barrier_timeout_s=ck.barrier_timeout_s,
        on_write_error=ck.on_write_error,
        drop_page_cache=ck.drop_page_cache,
    )


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


def train(config, workdir: str | Path) -> TrainResult:
    """Trains `config` in `workdir`, resuming from its latest checkpoint.

    Every process calls this with the same config.
    """
    workdir = Path(workdir).absolute()  # Orbax wants absolute paths.
    process_index, process_count = jax.process_index(), jax.process_count()
    is_primary = process_index == 0
    mesh_shape = validation.validate(
        config, num_devices=jax.device_count(), num_processes=process_count
    )
    distribution = mesh.build_distribution(
        mesh_shape, config.mesh.axis_names, config.mesh.layout_rules
    )
    shard = mesh.data_shard(mesh.process_grid(mesh_shape), config.mesh.axis_names, process_index)
    splits = data.load_splits(config.data)
    tr = config.trainer
    total_steps = tr.epochs * tr.steps_per_epoch

    preemption = PreemptionWatch()
    with distribution.scope():
        keras.utils.set_random_seed(tr.seed)  # Same seed everywhere: same initial weights.
        model = models.build(config)
        position = data.position(config.data, splits)
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
                logging.info(
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

        callbacks = [
            preemption,
            # Before the loggers: it adds `learning_rate` to the logs they write.
            optim.LearningRateLogger(optim.schedule(config.optimizer, total_steps)),
            MetricsLogger(
                workdir / "metrics.jsonl",
                log_every=tr.log_every,
                total_steps=total_steps,
                enabled=is_primary,
            ),
        ]
        if process_count > 1 and jax.default_backend() == "cpu" and jax.local_device_count() > 1:
            callbacks.append(SyncEvalSteps())
        if config.checkpoint.enabled:
            callbacks.append(
                _checkpoint_callback(
                    config,
                    ckpt_dir,
                    tr.steps_per_epoch,
                    # Batches, not optimizer steps (they differ with accumulation).
                    lambda: {**position, "step": int(model.optimizer._iterations)},
                )
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
                verbose=2 if is_primary else 0,
            )
            for key, values in h.history.items():
                history.setdefault(key, []).extend(float(v) for v in values)
            if preemption.stopped_at is not None:
                # The checkpoint callback's on_train_end has committed this step.
                raise Preempted(preemption.stopped_at)

        final_step = int(model.optimizer.iterations)
        digest = weights_digest(model)
    result = TrainResult(
        start_step=start_step, final_step=final_step, weights_sha256=digest, history=history
    )
    (workdir / f"final_p{process_index}.json").write_text(json.dumps(result.__dict__, indent=2))
    logging.info("finished at step %d; weights sha256 %s", final_step, digest[:16])
    return result
