"""KerasHub causal LMs as built-in models: `gemma` and `llama`.

Each factory builds the family's Backbone and its CausalLM (no
preprocessor) from the sizes in `model.kwargs` (random init, nothing
downloaded) or from a local preset directory (`model.kwargs.preset`), and
wraps it in a Functional model over token ids: the padding mask is all ones
(`tokens` windows have no padding), the output is the logits in float32, so
`(tokens, next tokens)` records and `model.loss` work as for any model.

The factories carry `get_layout_map(device_mesh)`, the Backbone's own
layouts with its axis names mapped to podfit's (`data`, `model`); the trainer
asks for them before the model is built (trainer/mesh.py).

keras-hub is the optional extra `.[hub]`; this module imports it only when a
factory or a layout map is asked for.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Callable

import jax
import keras
import numpy as np
from etils import epath
from keras import ops

from configs.validation import BATCH_AXIS, ConfigError
from trainer.mesh import MODEL_AXIS

INSTALL = "pip install -e '.[hub]' && pip install --no-deps keras-hub==0.32.0"


def keras_hub(name: str):
    """The keras_hub module, or a one-line ConfigError for model `name` saying how to install it."""
    try:
        import keras_hub as module  # noqa: PLC0415  (the optional extra)
    except ImportError as e:
        raise ConfigError(
            "model.name", f"KerasHub models need keras-hub ({e}); install: {INSTALL}.", name
        ) from e
    return module


@keras.saving.register_keras_serializable(package="podfit")
class PaddingMask(keras.layers.Layer):
    """All ones, the shape of its token ids: windows of a token file have no padding."""

    def call(self, token_ids):
        return ops.ones_like(token_ids, dtype="int32")

    def compute_output_spec(self, token_ids):
        return keras.KerasTensor(token_ids.shape, dtype="int32")


def _classes(family: str):
    hub = keras_hub(family.lower())
    return getattr(hub.models, f"{family}Backbone"), getattr(hub.models, f"{family}CausalLM")


def _check_sizes(family: str, backbone_cls, sizes: dict) -> None:
    """Refuses sizes the Backbone does not take and names the ones it needs."""
    params = inspect.signature(backbone_cls).parameters
    named = {
        n: p
        for n, p in params.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "dtype"
    }
    for key, value in sizes.items():
        if key not in named:
            raise ConfigError(
                f"model.kwargs.{key}",
                f"not an argument of keras_hub.models.{family}Backbone; it takes "
                f"{sorted(named)} (dtype: trainer.dtype_policy), or preset.",
                value,
            )
    for name, p in named.items():
        if p.default is p.empty and name not in sizes:
            raise ConfigError(
                f"model.kwargs.{name}",
                f"required by keras_hub.models.{family}Backbone (or give model.kwargs.preset).",
                None,
            )


def _preset_dir(preset, sizes: dict) -> str:
    if sizes:
        key = sorted(sizes)[0]
        raise ConfigError(
            f"model.kwargs.{key}",
            "the sizes come from model.kwargs.preset; give one or the other.",
            sizes[key],
        )
    if not isinstance(preset, str) or "://" in preset:
        raise ConfigError(
            "model.kwargs.preset",
            "expected a local preset directory (KerasHub reads bucket URLs through "
            "TensorFlow only; copy the preset down first).",
            preset,
        )
    path = epath.Path(preset).expanduser()
    if not (path / "config.json").exists():
        raise ConfigError(
            "model.kwargs.preset",
            "expected a local preset directory holding config.json (save_to_preset writes one).",
            preset,
        )
    return os.fspath(path.resolve())


def host_to_layout(value, layout, dtype=None) -> jax.Array:
    """A jax.Array laid out as `layout`, each device's shard read from `value` alone.

    `value` is any host array that slices (numpy, an h5py dataset); only the
    slices of this process' devices are read, and no device ever holds more
    than its shard.
    """
    sharding = getattr(layout, "backend_layout", layout)
    target = np.dtype(jax.numpy.dtype(dtype)) if dtype is not None else value.dtype

    def shard(index):
        return np.asarray(value[index]).astype(target, copy=False)

    return jax.make_array_from_callback(tuple(value.shape), sharding, shard)


@contextlib.contextmanager
def shard_wise_assign():
    """Within: `variable.assign(host_array)` of a variable with a layout goes shard by shard.

    Keras converts the host array to one whole device array (on the default
    device) and then reshards it: loading a preset under a distribution holds
    each whole weight on one device first. Here the conversion builds the
    laid-out array from its slices (`host_to_layout`) instead. Variables
    without a layout, and anything else than a numpy array, convert as Keras
    does.
    """
    cls = keras.Variable
    original = cls._convert_to_tensor

    def convert(self, value, dtype=None):
        layout = getattr(self, "_layout", None)
        if layout is not None and isinstance(value, np.ndarray):
            if tuple(value.shape) == tuple(self.shape):
                return host_to_layout(value, layout, dtype or self.dtype)
        return original(self, value, dtype=dtype)

    cls._convert_to_tensor = convert
    try:
        yield
    finally:
        cls._convert_to_tensor = original


def _token_model(family: str, causal_lm) -> keras.Model:
    token_ids = keras.Input((None,), dtype="int32", name="tokens")
    mask = PaddingMask(name="padding_mask")(token_ids)
    logits = causal_lm({"token_ids": token_ids, "padding_mask": mask})
    # Logits in float32 under mixed precision: the loss is computed from them.
    logits = keras.layers.Activation("linear", dtype="float32", name="logits")(logits)
    return keras.Model(token_ids, logits, name=family.lower())


def causal_lm(family: str, preset: str | None, load_weights: bool, sizes: dict) -> keras.Model:
    """The `family` CausalLM over token ids, from `sizes` or a local `preset`.

    Args:
      family: "Gemma" or "Llama" (`keras_hub.models.{family}Backbone`).
      preset: a local preset directory, or None for `sizes`.
      load_weights: with a preset, its weights (else a random init of its sizes).
      sizes: the Backbone's arguments (vocabulary_size, num_layers, ...).
    """
    backbone_cls, task_cls = _classes(family)
    if not isinstance(load_weights, bool):
        raise ConfigError("model.kwargs.load_weights", "expected a bool.", load_weights)
    if preset is None:
        _check_sizes(family, backbone_cls, sizes)
        lm = task_cls(backbone=backbone_cls(**sizes), preprocessor=None, name="causal_lm")
    else:
        path = _preset_dir(preset, sizes)
        with shard_wise_assign():
            lm = task_cls.from_preset(
                path, load_weights=load_weights, preprocessor=None, name="causal_lm"
            )
    return _token_model(family, lm)


def layout_map_of(family: str) -> Callable:
    """`get_layout_map(device_mesh)` of the family's Backbone, on podfit's axis names."""

    def get_layout_map(device_mesh):
        names = tuple(device_mesh.axis_names)
        if BATCH_AXIS not in names or MODEL_AXIS not in names:
            raise ConfigError(
                "mesh.axis_names",
                f"{family}Backbone.get_layout_map needs the axes ({BATCH_AXIS!r}, {MODEL_AXIS!r}).",
                names,
            )
        backbone_cls, _ = _classes(family)
        return backbone_cls.get_layout_map(
            device_mesh, model_parallel_dim_name=MODEL_AXIS, data_parallel_dim_name=BATCH_AXIS
        )

    return get_layout_map


def gemma(*, preset: str | None = None, load_weights: bool = True, **sizes) -> keras.Model:
    """keras_hub's GemmaCausalLM over token ids.

    Args:
      preset: a local preset directory (`save_to_preset`); None: `sizes`.
      load_weights: load the preset's weights (False: random init of its sizes).
      **sizes: `keras_hub.models.GemmaBackbone` arguments: vocabulary_size,
        num_layers, num_query_heads, num_key_value_heads, hidden_dim,
        intermediate_dim, head_dim, and optional ones.
    """
    return causal_lm("Gemma", preset, load_weights, sizes)


def llama(*, preset: str | None = None, load_weights: bool = True, **sizes) -> keras.Model:
    """keras_hub's LlamaCausalLM over token ids.

    Args:
      preset: a local preset directory (`save_to_preset`); None: `sizes`.
      load_weights: load the preset's weights (False: random init of its sizes).
      **sizes: `keras_hub.models.LlamaBackbone` arguments: vocabulary_size,
        num_layers, num_query_heads, hidden_dim, intermediate_dim,
        num_key_value_heads, and optional ones.
    """
    return causal_lm("Llama", preset, load_weights, sizes)


gemma.get_layout_map = layout_map_of("Gemma")
llama.get_layout_map = layout_map_of("Llama")
