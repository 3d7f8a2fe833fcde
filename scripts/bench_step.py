"""Per step: the real `trainer.train` path against a raw `jax.jit` + optax loop.

`trainer.train(config, workdir)` is what `python -m launcher.main` runs: the config's model
and mesh, grain input, every podfit callback (checkpoints saving every 10**9 steps: only
the final save, in `on_train_end`). Its step time runs from the end of step `warmup`
(compiled, warm) to the end of the epoch, `steps` steps later, as `StepClock` notes it.

The raw loop trains the same config's model on the same mesh and grain batches (read
ahead into host memory, each put onto the batch sharding at its step): `jax.jit` of
`value_and_grad` of `model.stateless_call` and optax's AdamW with the config's clipping,
state donated. At most two steps are in flight, enough to keep an accelerator busy; on CPU
one, as several in flight stall XLA's CPU all-reduce between the devices of a process.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from unittest import mock

import jax
import keras
import optax
from bench_report import describe
from jax.sharding import NamedSharding, PartitionSpec

from trainer import data, mesh
from trainer import train as trainer


def batches(config, steps: int) -> list:
    """The first `steps` global batches of the config's training data, as (x, y) arrays."""
    c = config.data
    return list(data.train_dataset(
        data.load_splits(c).train, seed=c.seed, global_batch_size=c.global_batch_size,
        shard=mesh.DataShard(0, 1), start_step=0, num_steps=steps,
    ))  # fmt: skip


def raw_loop(config, model, dist):
    """Returns run(batches) -> seconds, training `model`'s parameters with a jitted step."""
    o = config.optimizer  # keras.optimizers.AdamW's betas and epsilon:
    adamw = optax.adamw(o.learning_rate, 0.9, 0.999, 1e-7, weight_decay=o.weight_decay)
    tx = optax.chain(optax.clip_by_global_norm(o.global_clipnorm), adamw)
    mesh_, params = dist.device_mesh.backend_mesh, [v.value for v in model.trainable_variables]
    state = {"params": params, "opt": tx.init(params)}  # Moments sharded like the parameters,
    replicated = NamedSharding(mesh_, PartitionSpec())  # step counts replicated on the mesh.
    batch_sharding = NamedSharding(mesh_, PartitionSpec("data"))
    in_flight = 1 if jax.default_backend() == "cpu" else 2
    state = jax.tree.map(lambda a: jax.device_put(a, replicated) if a.ndim == 0 else a, state)
    fixed = [v.value for v in model.non_trainable_variables]

    def step(state, x, y):
        def loss_fn(params):
            logits, _ = model.stateless_call(params, fixed, x, training=True)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(state["params"])
        updates, opt = tx.update(grads, state["opt"], state["params"])
        return {"params": optax.apply_updates(state["params"], updates), "opt": opt}, loss

    shardings = jax.tree.map(lambda a: a.sharding, state)  # Kept, as Keras' own step keeps them.
    step = jax.jit(step, donate_argnums=0, out_shardings=(shardings, None))

    def run(feed) -> float:
        nonlocal state
        start, losses = time.perf_counter(), []
        for x, y in feed:
            state, loss = step(state, *jax.device_put((x, y), batch_sharding))
            losses.append(loss)
            if len(losses) > in_flight:
                losses[-1 - in_flight].block_until_ready()
        jax.block_until_ready(losses[-1])
        return time.perf_counter() - start

    return run


class StepClock(keras.callbacks.Callback):
    """Notes when step `warmup` is done and when the epoch ends; `async_safe`, so it leaves
    Keras' dispatch of batch ends as the other callbacks make it."""

    async_safe = True

    def __init__(self, warmup: int):
        super().__init__()
        self.warmup, self.start, self.end = warmup, None, None

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.warmup - 1:
            jax.block_until_ready(logs)
            self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.end = time.perf_counter()


def trainer_step_seconds(config, steps: int, warmup: int, scratch: str) -> float:
    """One `trainer.train` run in a new workdir, with a `StepClock` added to its `fit`."""
    config = config.copy_and_resolve_references()
    config.trainer.epochs, config.trainer.steps_per_epoch = 1, warmup + steps
    config.trainer.validation_steps, config.checkpoint.save_freq = 0, str(10**9)
    clock, fit = StepClock(warmup), keras.Model.fit

    def fit_with_clock(model, *args, callbacks=None, **kwargs):
        return fit(model, *args, callbacks=[*(callbacks or []), clock], **kwargs)

    with tempfile.TemporaryDirectory(dir=scratch) as workdir:
        with mock.patch.object(keras.Model, "fit", fit_with_clock):
            trainer.train(config, workdir)
    return (clock.end - clock.start) / steps


def measure(config, model, dist, steps: int, warmup: int, rounds: int, scratch: str, log):
    """Seconds per step of both paths, which one runs first alternating between rounds."""
    described = describe(config, model)  # Before the raw loop donates the model's arrays.
    run, feed = raw_loop(config, model, dist), batches(config, steps)
    with dist.scope():  # Traced under the distribution, as Keras traces its step.
        run(feed[:2])
    timers = {
        "trainer_train": lambda: trainer_step_seconds(config, steps, warmup, scratch),
        "raw_loop": lambda: run(feed) / steps,
    }
    seconds = {name: [] for name in timers}
    for r in range(rounds):
        for name in list(timers)[:: 1 if r % 2 == 0 else -1]:
            seconds[name].append(timers[name]())
        log(f"step round {r} (ms): { {k: round(v[-1] * 1e3, 1) for k, v in seconds.items()} }")
    figures = {name: {"step": statistics.median(values)} for name, values in seconds.items()}
    return {"model": described, "seconds": seconds, "figures": figures}
