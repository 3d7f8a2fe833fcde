"""The Keras OrbaxCheckpoint guide's flow, with checkpointing.OrbaxCheckpoint."""

import dataclasses
import inspect

import jax
import keras
import numpy as np
import pytest

import checkpointing
from checkpointing import layout
from checkpointing import metadata as meta
from checkpointing.options import CheckpointOptions, OptionError
from tests.checkpointing.common import make_data, make_model

# 128 samples, batch 16: 8 steps per epoch; with validation_split=0.25, 6.
BATCH = 16
OPTION_FIELDS = [f.name for f in dataclasses.fields(CheckpointOptions)]


def steps(directory) -> list[int]:
    return [info.step for info in checkpointing.list_steps(directory)]


def assert_same_values(variables_a, variables_b):
    assert len(variables_a) == len(variables_b)
    for a, b in zip(variables_a, variables_b, strict=True):
        np.testing.assert_array_equal(np.asarray(a.value), np.asarray(b.value), err_msg=a.path)


@pytest.mark.parametrize("save_on_background", [True, False])
def test_save_every_epoch_names_steps_by_global_step(tmp_path, save_on_background):
    x, y = make_data()
    model = make_model()
    callback = checkpointing.OrbaxCheckpoint(
        tmp_path, max_to_keep=3, save_on_background=save_on_background
    )
    model.fit(
        x, y, batch_size=BATCH, epochs=3, validation_split=0.25, verbose=0, callbacks=[callback]
    )
    assert steps(tmp_path) == [6, 12, 18]  # Keras would name them 0, 1, 2.
    restored = checkpointing.restore_latest(tmp_path, make_model())
    assert restored.progress == checkpointing.Progress(global_step=18, epoch=3, step_in_epoch=0)


def test_save_every_n_batches_and_max_to_keep(tmp_path):
    x, y = make_data()
    callback = checkpointing.OrbaxCheckpoint(tmp_path, save_freq=3, max_to_keep=2)
    make_model().fit(x, y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[callback])
    # Saves at 3, 6, 9, 12, 15 and the final step 16; the latest two stay.
    assert steps(tmp_path) == [15, 16]


def test_max_to_keep_none_keeps_all(tmp_path):
    x, y = make_data()
    callback = checkpointing.OrbaxCheckpoint(tmp_path, save_freq=4, max_to_keep=None)
    make_model().fit(x, y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[callback])
    assert steps(tmp_path) == [4, 8, 12, 16]


def test_load_model_and_load_weights_read_our_directory(tmp_path):
    x, y = make_data()
    model = make_model()
    callback = checkpointing.OrbaxCheckpoint(tmp_path, save_freq=5, max_to_keep=2)
    model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[callback])
    assert steps(tmp_path) == [15, 16]  # The final state is committed.

    loaded = keras.saving.load_model(tmp_path)
    fresh = make_model()
    fresh.load_weights(tmp_path)
    assert_same_values(model.weights, loaded.weights)
    assert_same_values(model.weights, fresh.weights)
    assert int(loaded.optimizer.iterations) == 16

    restored_into = make_model()
    checkpointing.restore_latest(tmp_path, restored_into)
    assert_same_values(model.weights, restored_into.weights)
    assert_same_values(model.optimizer.variables, restored_into.optimizer.variables)


def test_save_best_only_keeps_the_best(tmp_path):
    x, y = make_data()
    model = make_model()
    callback = checkpointing.OrbaxCheckpoint(
        tmp_path, monitor="val_loss", mode="min", save_best_only=True, max_to_keep=1
    )
    history = model.fit(
        x, y, batch_size=BATCH, epochs=4, validation_split=0.25, verbose=0, callbacks=[callback]
    )
    val = history.history["val_loss"]
    best_epoch = int(np.argmin(val))
    [info] = checkpointing.list_steps(tmp_path)
    assert info.step == 6 * (best_epoch + 1)  # Not the final step.
    assert info.metrics["val_loss"] == pytest.approx(val[best_epoch])
    assert callback.best == pytest.approx(min(val))


def test_resume_with_a_fresh_callback_keeps_best_and_save_points(tmp_path):
    x, y = make_data()
    model = make_model()
    first = checkpointing.OrbaxCheckpoint(
        tmp_path, monitor="loss", save_freq=5, max_to_keep=None, steps_per_epoch=8
    )
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[first])
    assert steps(tmp_path) == [5, 8]
    best = first.best
    assert best is not None

    # As in the guide: reload, then continue with a new callback on the same dir.
    resumed = keras.saving.load_model(tmp_path)
    second = checkpointing.OrbaxCheckpoint(
        tmp_path, monitor="loss", save_freq=5, max_to_keep=None, steps_per_epoch=8
    )
    second.set_model(resumed)
    second.on_train_begin()
    assert second.best == pytest.approx(best)
    second.on_train_end()  # Nothing new to save.
    resumed.fit(x, y, batch_size=BATCH, epochs=2, initial_epoch=1, verbose=0, callbacks=[second])
    # Save points stay multiples of save_freq in the global step.
    assert steps(tmp_path) == [5, 8, 10, 15, 16]
    restored = checkpointing.restore_latest(tmp_path, make_model())
    assert restored.progress == checkpointing.Progress(16, 2, 0)
    assert restored.callback_state["best"] <= best


def test_step_record_holds_progress_data_metadata_topology_versions(tmp_path):
    x, y = make_data()
    model = make_model()
    position = {"seed": 3, "consumed": 0}

    class Count(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            position["consumed"] += BATCH

    callback = checkpointing.OrbaxCheckpoint(
        tmp_path,
        save_freq=3,
        max_to_keep=None,
        data_state=lambda: dict(position),
        metadata={"config": {"lr": 0.1, "layers": [1, 2]}},
    )
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[Count(), callback])
    restored = checkpointing.restore(tmp_path, make_model(), step=6)
    assert restored.step == 6
    assert restored.progress == checkpointing.Progress(6, 0, 6)
    assert restored.data_state == {"seed": 3, "consumed": 6 * BATCH}
    assert restored.metadata == {"config": {"lr": 0.1, "layers": [1, 2]}}
    assert restored.topology.process_count == 1
    assert restored.topology.device_count == jax.device_count()
    assert restored.versions.keras == keras.__version__
    assert restored.versions.jax == jax.__version__
    info = {i.step: i for i in checkpointing.list_steps(tmp_path)}
    assert set(info) == {3, 6, 8}
    assert info[6].size_bytes > 0 and "loss" in info[6].metrics


def test_save_weights_only(tmp_path):
    x, y = make_data()
    model = make_model()
    callback = checkpointing.OrbaxCheckpoint(tmp_path, save_weights_only=True)
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[callback])
    path = layout.step_path(tmp_path, 8)
    assert layout.MODEL_CONFIG not in layout.saved_checkpointables(path)
    fresh = make_model()
    fresh.load_weights(tmp_path)
    assert_same_values(model.weights, fresh.weights)
    with pytest.raises(ValueError, match="model configuration"):
        keras.saving.load_model(tmp_path)
    other = make_model()
    checkpointing.restore_latest(tmp_path, other)
    assert_same_values(model.weights, other.weights)


def test_restore_errors(tmp_path):
    assert checkpointing.restore_latest(tmp_path / "missing", make_model()) is None
    x, y = make_data()
    callback = checkpointing.OrbaxCheckpoint(tmp_path)
    make_model().fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[callback])
    with pytest.raises(ValueError, match=r"Received: step=5"):
        checkpointing.restore(tmp_path, make_model(), step=5)
    with pytest.raises(ValueError, match="shape"):
        checkpointing.restore_latest(tmp_path, make_model(units=4))
    with pytest.raises(ValueError, match="does not exist"):
        checkpointing.list_steps(tmp_path / "missing")


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"save_freq": "batch"}, "save_freq"),
        ({"save_freq": 0}, "save_freq"),
        ({"save_freq": True}, "save_freq"),
        ({"mode": "up"}, "mode"),
        ({"max_to_keep": 0}, "max_to_keep"),
        ({"keep_best": -1}, "keep_best"),
        ({"keep_period": 1.5}, "keep_period"),
        ({"steps_per_epoch": 0}, "steps_per_epoch"),
        ({"snapshot": "disk"}, "snapshot"),
        ({"barrier_timeout_s": 0}, "barrier_timeout_s"),
        ({"metadata": {"f": object()}}, "metadata"),
        ({"metadata": [1]}, "metadata"),
        ({"data_state": {"a": 1}}, "data_state"),
        ({"save_best_only": "yes"}, "save_best_only"),
        ({"save_on_background": 1}, "save_on_background"),
        ({"directory": ""}, "directory"),
        ({"verbose": "loud"}, "verbose"),
        ({"initial_value_threshold": "low"}, "initial_value_threshold"),
    ],
)
def test_bad_arguments_name_the_argument_and_echo_the_value(tmp_path, kwargs, name):
    kwargs = {"directory": tmp_path, **kwargs}
    with pytest.raises(ValueError, match=rf"Received: {name}="):
        checkpointing.OrbaxCheckpoint(**kwargs)
    options = {k: v for k, v in kwargs.items() if k in OPTION_FIELDS}
    if options:  # The same check, the same message, from the options object.
        with pytest.raises(OptionError, match=rf"^{name} .* Received: {name}="):
            CheckpointOptions(**options)


def test_the_keyword_defaults_are_the_options_defaults_and_keras_signature():
    signature = inspect.signature(checkpointing.OrbaxCheckpoint)
    defaults = {name: signature.parameters[name].default for name in OPTION_FIELDS}
    assert defaults == dataclasses.asdict(CheckpointOptions())
    # A drop-in: Keras' parameters, in Keras' order, with Keras' defaults.
    stock = list(inspect.signature(keras.callbacks.OrbaxCheckpoint).parameters.values())
    ours = list(signature.parameters.values())[: len(stock)]
    assert [(p.name, p.default, p.kind) for p in ours] == [
        (p.name, p.default, p.kind) for p in stock
    ]


def test_scalar_logs_keeps_finite_scalars_as_floats():
    logs = {
        "loss": np.float32(0.5),
        "acc": jax.numpy.asarray(0.25),
        "n": 3,
        "nan": float("nan"),
        "inf": float("inf"),
        "vector": np.zeros(3),
        "name": "x",
    }
    scalars = meta.scalar_logs(logs)
    assert scalars == {"loss": 0.5, "acc": 0.25, "n": 3.0}
    assert all(type(v) is float for v in scalars.values())
    assert meta.scalar_logs(None) == {}


def test_options_object_or_keywords_not_both(tmp_path):
    options = CheckpointOptions(save_freq=4, max_to_keep=None, monitor="loss")
    callback = checkpointing.OrbaxCheckpoint(tmp_path, options=options)
    assert callback.options is options and callback.monitor == "loss"
    with pytest.raises(ValueError, match="not both. Received: {'save_freq': 8}"):
        checkpointing.OrbaxCheckpoint(tmp_path, save_freq=8, options=options)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.save_freq = 2
    x, y = make_data()
    make_model().fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[callback])
    assert [s.step for s in checkpointing.list_steps(tmp_path)] == [4, 8]


def test_data_state_that_is_not_json_fails_the_save(tmp_path):
    x, y = make_data()
    callback = checkpointing.OrbaxCheckpoint(tmp_path, data_state=lambda: {"it": object()})
    with pytest.raises(ValueError, match="Received: data_state="):
        make_model().fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[callback])
