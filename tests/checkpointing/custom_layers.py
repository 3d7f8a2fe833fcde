"""A registered custom layer for the loading tests; imported by name from a checkpoint."""

import keras


@keras.saving.register_keras_serializable(package="podfit_tests")
class Scale(keras.layers.Layer):
    """Multiplies its input by a learned vector."""

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="scale")

    def call(self, inputs):
        return inputs * self.scale


def make_model() -> keras.Model:
    inputs = keras.Input(shape=(8,))
    hidden = keras.layers.Dense(16, activation="relu", name="dense_1")(inputs)
    hidden = Scale(name="scale")(hidden)
    model = keras.Model(inputs, keras.layers.Dense(1, name="dense_2")(hidden))
    model.compile(optimizer="adam", loss="mse")
    return model
