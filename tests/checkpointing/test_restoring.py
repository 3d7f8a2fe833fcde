"""Restoring into a model that did not write the checkpoint: every difference, one error."""

import keras
import pytest

import checkpointing
from checkpointing.restoring import CheckpointMismatchError
from tests.checkpointing.common import make_data, make_model

BATCH = 16


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A checkpoint of `make_model(units=16)`; one epoch, so optimizer state exists."""
    directory = tmp_path_factory.mktemp("ckpt")
    keras.utils.set_random_seed(0)
    x, y = make_data()
    callback = checkpointing.OrbaxCheckpoint(directory)
    make_model(units=16).fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[callback])
    return directory


def _three_layers() -> keras.Model:
    """make_model's layers, plus one the checkpoint lacks."""
    inputs = keras.Input(shape=(8,))
    hidden = keras.layers.Dense(16, activation="relu", name="dense_1")(inputs)
    hidden = keras.layers.Dense(16, activation="relu", name="dense_extra")(hidden)
    model = keras.Model(inputs, keras.layers.Dense(1, name="dense_2")(hidden))
    model.compile(optimizer="adam", loss="mse")
    return model


def test_different_width_lists_every_mismatch_with_both_shapes(saved):
    with pytest.raises(CheckpointMismatchError) as info:
        checkpointing.restore_latest(saved, make_model(units=4))
    error = info.value
    message = str(error)
    assert isinstance(error, ValueError)  # Callers catching ValueError still do.
    assert "\n" not in message
    assert message.startswith(f"checkpoint {saved}/8 is from a different model: ")
    assert "Received: model=" in message
    for expected in (
        "trainable_variables/dense_1/kernel saved shape (8, 16) vs model shape (8, 4)",
        "trainable_variables/dense_1/bias saved shape (16,) vs model shape (4,)",
        "trainable_variables/dense_2/kernel saved shape (16, 1) vs model shape (4, 1)",
    ):
        assert expected in message, message
        assert expected in error.mismatches
    # Adam's two slots per differing variable differ too; the optimizer name may differ.
    slots = [m for m in error.mismatches if m.startswith("optimizer_variables/")]
    assert len(slots) == 6, error.mismatches
    assert all("saved shape" in m and "vs model shape" in m for m in slots)
    assert len(error.mismatches) == 9
    assert "9 variable(s) differ" in message
    # dense_2/bias has the same shape: not listed.
    assert "dense_2/bias" not in message


def test_variables_on_one_side_only_are_listed(saved):
    with pytest.raises(CheckpointMismatchError) as info:
        checkpointing.restore_latest(saved, _three_layers())
    mismatches = info.value.mismatches
    assert (
        "trainable_variables/dense_extra/kernel saved: missing vs model shape (16, 16)"
        in mismatches
    )
    assert "trainable_variables/dense_extra/bias saved: missing vs model shape (16,)" in mismatches
    assert not [m for m in mismatches if "dense_1" in m or "dense_2" in m], mismatches

    inputs = keras.Input(shape=(8,))
    smaller = keras.Model(inputs, keras.layers.Dense(1, name="dense_2")(inputs))
    smaller.compile(optimizer="adam", loss="mse")
    with pytest.raises(CheckpointMismatchError) as info:
        checkpointing.restore_latest(saved, smaller)
    mismatches = info.value.mismatches
    assert "trainable_variables/dense_1/kernel saved shape (8, 16) vs model: missing" in mismatches
    assert "trainable_variables/dense_2/kernel saved shape (16, 1) vs model shape (8, 1)" in (
        mismatches
    )


def test_long_lists_are_capped():
    mismatches = [
        f"trainable_variables/d{i}/kernel saved shape (1,) vs model shape (2,)" for i in range(13)
    ]
    message = str(CheckpointMismatchError("/ckpt/5", mismatches, "m"))
    assert "13 variable(s) differ" in message
    assert "d9/kernel" in message and "d10/kernel" not in message
    assert "; and 3 more. Received: model='m'" in message


def test_matching_model_still_restores(saved):
    model = make_model(units=16)
    restored = checkpointing.restore_latest(saved, model)
    assert restored.step == 8


def test_weights_only_checkpoint_restores_without_optimizer_state(tmp_path):
    """A step without optimizer variables is not a different model."""
    x, y = make_data()
    callback = checkpointing.OrbaxCheckpoint(tmp_path, save_weights_only=True)
    model = make_model(units=16)
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[callback])
    fresh = make_model(units=16)
    assert checkpointing.restore_latest(tmp_path, fresh).step == 8
    for a, b in zip(model.trainable_variables, fresh.trainable_variables, strict=True):
        assert (a.numpy() == b.numpy()).all(), a.path
    with pytest.raises(CheckpointMismatchError, match="dense_1/kernel saved shape"):
        checkpointing.restore_latest(tmp_path, make_model(units=4))
