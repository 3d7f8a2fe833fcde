"""Retention through Orbax preservation policies, checked by listing."""

import keras
import pytest

import checkpointing
from tests.checkpointing.common import make_data, make_model

# A made-up score per global step; the best two are steps 3 and 7.
SCORES = {3: 0.9, 7: 0.8, 5: 0.1, 10: 0.2}


class Score(keras.callbacks.Callback):
    """Puts SCORES into the logs the checkpoint callback sees next."""

    def __init__(self, default: float):
        super().__init__()
        self.default = default

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations)
        logs["score"] = SCORES.get(step, self.default)


def fit_with(tmp_path, default=0.0, **kwargs):
    x, y = make_data(n=96)  # 12 steps of 8.
    callback = checkpointing.OrbaxCheckpoint(tmp_path, save_freq=1, monitor="score", **kwargs)
    model = make_model()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[Score(default), callback])
    return [info.step for info in checkpointing.list_steps(tmp_path)]


def test_keep_best_keep_period_and_max_to_keep_compose(tmp_path):
    kept = fit_with(tmp_path, mode="max", max_to_keep=2, keep_best=2, keep_period=5)
    # Latest 2: 11, 12. Best 2 by score: 3, 7. Multiples of 5: 5, 10.
    assert kept == [3, 5, 7, 10, 11, 12]


def test_keep_best_in_min_mode(tmp_path):
    kept = fit_with(tmp_path, default=1.0, mode="min", max_to_keep=1, keep_best=2)
    # Lowest scores: 0.1 at step 5, 0.2 at step 10; the latest is 12.
    assert kept == [5, 10, 12]


def test_keep_period_alone_keeps_multiples_for_good(tmp_path):
    assert fit_with(tmp_path, max_to_keep=1, keep_period=4) == [4, 8, 12]


@pytest.mark.parametrize("max_to_keep, expected", [(1, [12]), (3, [10, 11, 12])])
def test_max_to_keep(tmp_path, max_to_keep, expected):
    assert fit_with(tmp_path, max_to_keep=max_to_keep) == expected
