"""Schedules count optimizer steps; gradient accumulation; the logged learning rate."""

import math
import types

import keras
import numpy as np
import pytest

from configs import base
from trainer import optim


def _opt(**changes):
    config = base.get_config().optimizer
    for key, value in changes.items():
        config[key] = value
    return config


def test_cosine_with_warmup_values():
    rate = optim.schedule(
        _opt(learning_rate=1.0, schedule="cosine", warmup_steps=4, decay_steps=10, alpha=0.1), 100
    )
    assert [rate.at(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert rate.at(4) == pytest.approx(1.0)
    assert rate.at(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert rate.at(14) == pytest.approx(0.1) and rate.at(50) == pytest.approx(0.1)
    # The device-side value Keras uses is the same function.
    for step in (0, 3, 9, 14):
        assert float(rate(step)) == pytest.approx(rate.at(step), rel=1e-6)


def test_linear_and_constant_and_decay_over_the_rest_of_the_run():
    linear = optim.schedule(_opt(learning_rate=2.0, schedule="linear", warmup_steps=0), 11)
    assert linear.decay_steps == 11
    assert linear.at(0) == 2.0 and linear.at(11) == 0.0
    assert linear.at(5) == pytest.approx(2.0 * (1 - 5 / 11))
    constant = optim.schedule(_opt(learning_rate=0.5), 10)
    assert {constant.at(s) for s in range(20)} == {0.5}
    warm = optim.schedule(_opt(learning_rate=0.5, warmup_steps=2), 10)
    assert [warm.at(s) for s in range(4)] == [0.25, 0.5, 0.5, 0.5]
    # 40 batches with accumulation 4: 10 optimizer steps to decay over.
    cosine = optim.schedule(_opt(schedule="cosine", gradient_accumulation_steps=4), 40)
    assert cosine.decay_steps == 10


def test_schedule_serializes():
    rate = optim.schedule(_opt(schedule="cosine", warmup_steps=3, alpha=0.2), 50)
    again = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(rate))
    assert again.get_config() == rate.get_config()


def test_accumulation_updates_every_k_batches_and_the_rate_follows_optimizer_steps():
    """Keras counts batches in `_iterations` and evaluates a schedule at it;
    `iterations` is batches // k. podfit's schedule divides by k itself."""
    k = 4
    config = _opt(
        name="sgd", learning_rate=1.0, schedule="linear", warmup_steps=0, decay_steps=4,
        global_clipnorm=0.0, gradient_accumulation_steps=k,
    )  # fmt: skip
    optimizer = optim.build(config, total_batches=16)
    variable = keras.Variable(np.zeros(1, np.float32))
    optimizer.build([variable])
    values = []
    for batch in range(12):
        optimizer.apply([keras.ops.ones(1)], [variable])
        values.append(float(variable.numpy()[0]))
        assert int(optimizer._iterations) == batch + 1
        assert int(optimizer.iterations) == (batch + 1) // k
    # Updates land on batches 4, 8, 12 only, at rates 1.0, 0.75, 0.5 (optimizer steps 0, 1, 2).
    steps = [values[i] - (values[i - 1] if i else 0.0) for i in range(12)]
    expected = [0.0] * 12
    expected[3], expected[7], expected[11] = -1.0, -0.75, -0.5
    np.testing.assert_allclose(steps, expected, atol=1e-6)
    assert float(optimizer.learning_rate) == pytest.approx(optimizer._learning_rate.at(3))


def test_learning_rate_logger_reports_the_rate_of_the_latest_update():
    rate = optim.Schedule(1.0, kind="linear", decay_steps=8, accumulation_steps=2)
    logger = optim.LearningRateLogger(rate)
    assert logger.async_safe
    optimizer = keras.optimizers.SGD(rate, gradient_accumulation_steps=2)
    optimizer.build([keras.Variable(np.zeros(1, np.float32))])
    optimizer._iterations.assign(6)  # Resumed after 6 batches (3 updates).
    logger.set_model(types.SimpleNamespace(optimizer=optimizer))
    logger.on_train_begin()
    logger.on_epoch_begin(0)
    logs = [{} for _ in range(4)]
    for batch, entry in enumerate(logs):
        logger.on_train_batch_end(batch, entry)
    # Batches 7..10: optimizer steps (batches - 1) // 2 = 3, 3, 4, 4.
    assert [entry["learning_rate"] for entry in logs] == [
        rate.at(3),
        rate.at(3),
        rate.at(4),
        rate.at(4),
    ]
    epoch = {}
    logger.on_epoch_end(0, epoch)
    assert epoch["learning_rate"] == rate.at(4)
