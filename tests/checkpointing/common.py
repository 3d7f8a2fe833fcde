"""Shared model and data of the checkpointing tests."""

import keras
import numpy as np


def make_model(units: int = 16) -> keras.Model:
    """The Keras guide's model, with explicit layer names."""
    inputs = keras.Input(shape=(8,))
    hidden = keras.layers.Dense(units, activation="relu", name="dense_1")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(1, name="dense_2")(hidden))
    model.compile(optimizer="adam", loss="mse")
    return model


def make_data(n: int = 128) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.random((n, 8), dtype=np.float32)
    return x, x.sum(axis=1, keepdims=True) / 8.0
