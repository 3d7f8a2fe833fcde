"""Models by name: `config.model` -> a compiled Keras model.

`config.model.name` is a built-in (`REGISTRY`) or "package.module:function";
either way the function is called with `config.model.kwargs` as keyword
arguments and returns an uncompiled `keras.Model`. The trainer calls it inside
the distribution's scope, after `jax.distributed.initialize`, with the same
seed on every process. The built-ins are Functional graphs of stock layers
(plus one registered layer), so a checkpoint step loads with
`keras.saving.load_model` once this module is imported.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable

import keras
import ml_collections
from etils import epath
from keras import ops

from configs.validation import ConfigError
from trainer import hub, optim, plugins

DTYPE_POLICIES = ("float32", "mixed_bfloat16", "bfloat16")


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


def _positive(field: str, **values) -> None:
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{field}.{key}", "expected an int > 0.", value)


def _dropout(field: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise ConfigError(field, "must be in [0, 1).", value)


def transformer_lm(
    *,
    vocab_size: int = 256,
    seq_len: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    embed_dim: int = 128,
    mlp_dim: int = 512,
    dropout: float = 0.0,
) -> keras.Model:
    """Pre-norm decoder-only transformer over `seq_len` token ids.

    Layer names end in `attention`, `mlp_in` and `mlp_out` so that the
    layout rules of configs/lm.py find their kernels.
    """
    _positive(
        "model.kwargs",
        vocab_size=vocab_size,
        seq_len=seq_len,
        num_layers=num_layers,
        num_heads=num_heads,
        embed_dim=embed_dim,
        mlp_dim=mlp_dim,
    )
    _dropout("model.kwargs.dropout", dropout)
    if embed_dim % num_heads:
        raise ConfigError(
            "model.kwargs.embed_dim",
            f"must be divisible by model.kwargs.num_heads ({num_heads}).",
            embed_dim,
        )
    tokens = keras.Input((seq_len,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(vocab_size, embed_dim, name="token_embedding")(tokens)
    x = PositionEmbedding(seq_len, name="position_embedding")(x)
    for i in range(num_layers):
        h = keras.layers.LayerNormalization(name=f"block{i}_ln1")(x)
        h = keras.layers.MultiHeadAttention(
            num_heads, embed_dim // num_heads, dropout=dropout, name=f"block{i}_attention"
        )(h, h, use_causal_mask=True)
        x = keras.layers.Add(name=f"block{i}_add1")([x, h])
        h = keras.layers.LayerNormalization(name=f"block{i}_ln2")(x)
        h = keras.layers.Dense(mlp_dim, activation="gelu", name=f"block{i}_mlp_in")(h)
        h = keras.layers.Dense(embed_dim, name=f"block{i}_mlp_out")(h)
        if dropout:
            h = keras.layers.Dropout(dropout, name=f"block{i}_dropout")(h)
        x = keras.layers.Add(name=f"block{i}_add2")([x, h])
    x = keras.layers.LayerNormalization(name="final_ln")(x)
    # Logits in float32 under mixed precision: the loss is computed from them.
    logits = keras.layers.Dense(vocab_size, name="lm_head", dtype="float32")(x)
    return keras.Model(tokens, logits, name="transformer_lm")


def mlp(
    *,
    input_dim: int = 64,
    hidden_sizes: tuple = (128, 128),
    num_classes: int = 10,
    dropout: float = 0.0,
) -> keras.Model:
    """A ReLU MLP classifier over flat features (64 pixels for digits)."""
    _positive("model.kwargs", input_dim=input_dim, num_classes=num_classes)
    sizes = tuple(hidden_sizes)
    if not sizes or any(isinstance(s, bool) or not isinstance(s, int) or s <= 0 for s in sizes):
        raise ConfigError(
            "model.kwargs.hidden_sizes", "expected a non-empty tuple of ints > 0.", hidden_sizes
        )
    _dropout("model.kwargs.dropout", dropout)
    inputs = keras.Input((input_dim,), name="pixels")
    x = inputs
    for i, size in enumerate(sizes):
        x = keras.layers.Dense(size, activation="relu", name=f"dense{i}")(x)
        if dropout:
            x = keras.layers.Dropout(dropout, name=f"dropout{i}")(x)
    logits = keras.layers.Dense(num_classes, name="logits", dtype="float32")(x)
    return keras.Model(inputs, logits, name="mlp")


REGISTRY: dict[str, Callable[..., keras.Model]] = {
    "transformer_lm": transformer_lm,
    "mlp": mlp,
    # KerasHub causal LMs (the `.[hub]` extra), with their backbones' layouts.
    "gemma": hub.gemma,
    "llama": hub.llama,
}


def layout_map_fn(model_config) -> Callable | None:
    """The model's own layouts: its factory's `get_layout_map(device_mesh)`, or None.

    A factory (built-in or the user's) may carry a `get_layout_map` attribute
    returning a keras LayoutMap for a DeviceMesh; the distribution is built
    with it before the model (trainer/mesh.py:with_model_rules).
    """
    factory = plugins.resolve("model.name", model_config.name, REGISTRY)
    fn = getattr(factory, "get_layout_map", None)
    return fn if callable(fn) else None


def _takes(cls_or_fn, name: str) -> bool:
    try:
        return name in inspect.signature(cls_or_fn).parameters
    except (TypeError, ValueError):
        return False


def build_loss(model_config):
    """`model.loss`: a Keras identifier or an import path, `from_logits` where it applies."""
    name, from_logits = model_config.loss, model_config.from_logits
    if ":" in name:
        obj = plugins.resolve("model.loss", name, {})
    else:
        try:
            obj = keras.losses.get(name)
        except ValueError:
            raise ConfigError(
                "model.loss", "not a Keras loss identifier or 'package.module:function'.", name
            ) from None
        if inspect.isfunction(obj):
            # The Loss class of a loss function carries from_logits and serializes.
            camel = "".join(w.capitalize() for w in obj.__name__.split("_"))
            obj = getattr(keras.losses, camel, obj)
        elif isinstance(obj, keras.losses.Loss):
            obj = type(obj)
    if inspect.isclass(obj):
        if not issubclass(obj, keras.losses.Loss):
            raise ConfigError("model.loss", "names a class that is not a keras.losses.Loss.", name)
        return obj(from_logits=from_logits) if _takes(obj, "from_logits") else obj()
    if not callable(obj):
        raise ConfigError("model.loss", "does not name a loss function or class.", name)
    return obj


def build_metrics(model_config) -> list:
    """`model.metrics`: Keras identifiers (passed on as such) or import paths."""
    metrics = []
    for i, name in enumerate(model_config.metrics):
        field = f"model.metrics[{i}]"
        if ":" in name:
            obj = plugins.resolve(field, name, {})
            metrics.append(obj() if inspect.isclass(obj) else obj)
            continue
        try:
            keras.metrics.get(name)
        except ValueError:
            raise ConfigError(
                field, "not a Keras metric identifier or 'package.module:function'.", name
            ) from None
        metrics.append(name)  # compile() picks e.g. the sparse accuracy for 'accuracy'.
    return metrics


def build_model(model_config) -> keras.Model:
    """Calls the factory `model.name` with `model.kwargs`; refuses anything but a Model."""
    factory = plugins.resolve("model.name", model_config.name, REGISTRY)
    model = plugins.call_factory(
        "model", model_config.name, factory, plugins.plain(model_config.kwargs)
    )
    if not isinstance(model, keras.Model):
        raise ConfigError(
            "model.name",
            f"the factory must return a keras.Model; it returned {type(model).__name__}.",
            model_config.name,
        )
    return model


def build(config) -> keras.Model:
    """Builds and compiles `config.model`; optimizer variables are created too,
    so a checkpoint can be restored into the model before `fit`."""
    tr = config.trainer
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(tr.dtype_policy)  # Layers take it when they are built.
    try:
        model = build_model(config.model)
    finally:
        keras.config.set_dtype_policy(previous)
    model.compile(
        optimizer=optim.build(config.optimizer, tr.epochs * tr.steps_per_epoch),
        loss=build_loss(config.model),
        metrics=build_metrics(config.model),
        steps_per_execution=tr.steps_per_execution,
    )
    model.optimizer.build(model.trainable_variables)
    return model


def load(workdir: str, step: int | None = None) -> keras.Model:
    """The trained model of a podfit `workdir`, in one process, for inference or more fit.

    Rebuilds the model from `<workdir>/config.json` (the user's module must be
    importable, as for training) and restores `step` (default: the latest
    committed one) of `<workdir>/checkpoints`.

    Example:
      model = trainer.models.load("runs/default")
      model.predict(x)
    """
    import checkpointing  # noqa: PLC0415

    config = ml_collections.ConfigDict(
        json.loads((epath.Path(workdir) / "config.json").read_text())
    )
    model = build(config)
    directory = str(epath.Path(workdir) / "checkpoints")
    if step is None:
        if checkpointing.restore_latest(directory, model) is None:
            raise FileNotFoundError(f"no committed step in {directory}. Received: {workdir}")
    else:
        checkpointing.restore(directory, model, step)
    return model
