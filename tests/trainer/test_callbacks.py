"""podfit's callbacks keep Keras' async dispatch on and still act on the exact step."""

import concurrent.futures
import json
import os
import random
import signal
from types import SimpleNamespace

import keras
import numpy as np
import pytest

import checkpointing
from configs import lm
from tests.checkpointing.common import make_data, make_model
from trainer import train
from trainer.callbacks import BoundStepsInFlight, MetricsLogger
from trainer.preemption import PreemptionWatch


@pytest.fixture
def sigterm_restored():
    """PreemptionWatch installs a SIGTERM handler with one process; put the old one back."""
    before = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, before)


class _NotAsyncSafe(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        pass


def test_trainer_callbacks_keep_async_dispatch_on(tmp_path, sigterm_restored):
    config = lm.get_config("tiny")
    assert config.checkpoint.enabled
    callbacks = train.build_callbacks(config, tmp_path, PreemptionWatch(), is_primary=True)
    kinds = [type(c) for c in callbacks]
    assert checkpointing.OrbaxCheckpoint in kinds and MetricsLogger in kinds
    # 8 CPU devices in this process: the CPU-only bound comes first (see its docstring).
    assert kinds[0] is BoundStepsInFlight
    on = keras.callbacks.CallbackList(callbacks, add_history=True, add_progbar=True)
    assert on._async_train
    # The check can fail: one callback that is not async-safe turns it off.
    off = keras.callbacks.CallbackList([*callbacks, _NotAsyncSafe()], add_history=True)
    assert not off._async_train


def test_metric_lines_in_step_order_from_concurrent_batch_ends(tmp_path):
    path = tmp_path / "metrics.jsonl"
    logger = MetricsLogger(path, log_every=2, total_steps=30, enabled=True)
    # The optimizer's counter is read once per fit; steps are counted on the host.
    logger.set_model(SimpleNamespace(optimizer=SimpleNamespace(iterations=np.int64(10))))
    logger.on_train_begin()
    order = list(range(10))
    random.Random(0).shuffle(order)
    pool = concurrent.futures.ThreadPoolExecutor(4)
    for epoch in range(2):
        logger.on_epoch_begin(epoch)
        futures = [
            pool.submit(logger.on_train_batch_end, b, {"loss": float(epoch * 10 + b)})
            for b in order
        ]
        for f in futures:
            f.result()
        logger.on_epoch_end(epoch, {"loss": -1.0})
    pool.shutdown()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    steps = [r["step"] for r in records if "epoch" not in r]
    assert steps == [12, 14, 16, 18, 20, 22, 24, 26, 28, 30]
    # Each line carries its own batch's logs, whatever order the batches ended in.
    assert [r["loss"] for r in records if "epoch" not in r] == [1, 3, 5, 7, 9, 11, 13, 15, 17, 19]
    assert [(r["epoch"], r["step"]) for r in records if "epoch" in r] == [(1, 20), (2, 30)]
    times = [r["time"] for r in records if "epoch" not in r]
    assert times == sorted(times)
    assert [list(r)[0] for r in records if "epoch" not in r] == ["step"] * 10
    assert len(records) == 12


class _SigtermAt(keras.callbacks.Callback):
    def __init__(self, batch):
        super().__init__()
        self._batch = batch

    def on_train_batch_begin(self, batch, logs=None):
        if batch == self._batch:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_stops_right_after_the_step_about_to_run(sigterm_restored):
    keras.utils.set_random_seed(0)
    model = make_model()
    x, y = make_data(160)
    watch = PreemptionWatch()
    callbacks = [_SigtermAt(3), watch]
    assert keras.callbacks.CallbackList(callbacks)._async_train
    model.fit(x, y, batch_size=16, epochs=2, callbacks=callbacks, verbose=0, shuffle=False)
    # Signalled before the 4th step was dispatched: that step runs, then fit stops.
    assert watch.stopped_at == 4
    assert int(model.optimizer.iterations) == 4


class _WeightsAt(keras.callbacks.Callback):
    """Records the weights right after the given global steps (not async-safe: exact)."""

    def __init__(self, steps):
        super().__init__()
        self.steps, self.weights = set(steps), {}

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations)
        if step in self.steps:
            self.weights[step] = [np.asarray(v.value) for v in self.model.weights]


def _fit_with(directory, x, y, save_freq, extra=()):
    keras.utils.set_random_seed(0)
    model = make_model()
    callback = checkpointing.OrbaxCheckpoint(
        str(directory), save_freq=save_freq, max_to_keep=None, monitor="loss"
    )
    callbacks = [callback, *extra]
    assert keras.callbacks.CallbackList(callbacks)._async_train is (not extra)
    model.fit(x, y, batch_size=16, epochs=2, callbacks=callbacks, verbose=0, shuffle=False)
    return model


@pytest.mark.parametrize(
    "save_freq,steps,compared",
    [
        (3, [3, 6, 9, 12, 15, 18, 20], (9, 12)),  # Mid-epoch saves, the end's own save.
        (5, [5, 10, 15, 20], (5, 10)),  # A save due at an epoch's last batch.
    ],
)
def test_checkpoint_saves_the_exact_steps_with_async_dispatch_on_and_off(
    tmp_path, save_freq, steps, compared
):
    x, y = make_data(160)  # 10 batches per epoch, 2 epochs.
    truth = _WeightsAt(compared)
    _fit_with(tmp_path / "async", x, y, save_freq)
    _fit_with(tmp_path / "sync", x, y, save_freq, extra=[truth])
    ours = checkpointing.list_steps(tmp_path / "async")
    theirs = checkpointing.list_steps(tmp_path / "sync")
    assert [s.step for s in ours] == [s.step for s in theirs] == steps
    for a, b in zip(ours, theirs, strict=True):
        # The metrics stored with the step are that step's logs.
        assert sorted(a.metrics) == sorted(b.metrics) and "loss" in a.metrics
        np.testing.assert_allclose(a.metrics["loss"], b.metrics["loss"], rtol=1e-6)
    assert sorted(truth.weights) == sorted(compared)
    for step in compared:
        for name in ("async", "sync"):
            model = make_model()
            checkpointing.restore(tmp_path / name, model, step)
            assert int(model.optimizer.iterations) == step
            # The state of exactly that step, recorded right after it ran.
            for a, b in zip(
                [np.asarray(v.value) for v in model.weights], truth.weights[step], strict=True
            ):
                np.testing.assert_array_equal(a, b)
