"""Model registry: config.model -> a compiled Keras model.

Models are Functional graphs of stock layers (plus one registered layer), so
a checkpoint step loads with `keras.saving.load_model` once this module is
imported.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="podfit")
class PositionEmbedding(keras.layers.Layer):
    """Adds a learned embedding of each position to its input."""

    def __init__(self, max_length: int, **kwargs):
        super().__init__(**kwargs)
        self.max_length = max_length

    def build(self, input_shape):
        self.embeddings = self.add_weight(
            shape=(self.max_length, input_shape[-1]),
            initializer="glorot_uniform",
            name="embeddings",
        )

    def call(self, inputs):
        return inputs + ops.cast(self.embeddings[: ops.shape(inputs)[1]], inputs.dtype)

    def get_config(self):
        return {**super().get_config(), "max_length": self.max_length}


def transformer_lm(model_config, data_config) -> keras.Model:
    """Pre-norm decoder-only transformer over bytes.

    Layer names end in `attention`, `mlp_in` and `mlp_out` so that the
    layout rules of configs/lm.py find their kernels.
    """
    m = model_config
    tokens = keras.Input((data_config.seq_len,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(m.vocab_size, m.embed_dim, name="token_embedding")(tokens)
    x = PositionEmbedding(data_config.seq_len, name="position_embedding")(x)
    for i in range(m.num_layers):
        h = keras.layers.LayerNormalization(name=f"block{i}_ln1")(x)
        h = keras.layers.MultiHeadAttention(
            m.num_heads, m.embed_dim // m.num_heads, dropout=m.dropout, name=f"block{i}_attention"
        )(h, h, use_causal_mask=True)
        x = keras.layers.Add(name=f"block{i}_add1")([x, h])
        h = keras.layers.LayerNormalization(name=f"block{i}_ln2")(x)
        h = keras.layers.Dense(m.mlp_dim, activation="gelu", name=f"block{i}_mlp_in")(h)
        h = keras.layers.Dense(m.embed_dim, name=f"block{i}_mlp_out")(h)
        if m.dropout:
            h = keras.layers.Dropout(m.dropout, name=f"block{i}_dropout")(h)
        x = keras.layers.Add(name=f"block{i}_add2")([x, h])
    x = keras.layers.LayerNormalization(name="final_ln")(x)
    logits = keras.layers.Dense(m.vocab_size, name="lm_head")(x)
    return keras.Model(tokens, logits, name="transformer_lm")


def mlp(model_config, data_config) -> keras.Model:
    """A ReLU MLP classifier over flat features (64 pixels for digits)."""
    del data_config
    inputs = keras.Input((64,), name="pixels")
    x = inputs
    for i, size in enumerate(model_config.hidden_sizes):
        x = keras.layers.Dense(size, activation="relu", name=f"dense{i}")(x)
        if model_config.dropout:
            x = keras.layers.Dropout(model_config.dropout, name=f"dropout{i}")(x)
    logits = keras.layers.Dense(model_config.num_classes, name="logits")(x)
    return keras.Model(inputs, logits, name="mlp")


REGISTRY: dict[str, Callable] = {"transformer_lm": transformer_lm, "mlp": mlp}


def build_optimizer(opt_config) -> keras.optimizers.Optimizer:
    clip = opt_config.global_clipnorm or None
    if opt_config.name == "adamw":
        return keras.optimizers.AdamW(
            opt_config.learning_rate, weight_decay=opt_config.weight_decay, global_clipnorm=clip
        )
    if opt_config.name == "adam":
        return keras.optimizers.Adam(opt_config.learning_rate, global_clipnorm=clip)
    return keras.optimizers.SGD(opt_config.learning_rate, global_clipnorm=clip)


def build(config) -> keras.Model:
    """Builds and compiles `config.model`; optimizer variables are created too,
    so a checkpoint can be restored into the model before `fit`."""
    model = REGISTRY[config.model.name](config.model, config.data)
    model.compile(
        optimizer=build_optimizer(config.optimizer),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.optimizer.build(model.trainable_variables)
    return model
