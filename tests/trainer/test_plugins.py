"""Models, data, losses and metrics by import path: one mechanism, one-line errors."""

import keras
import numpy as np
import pytest

from configs import base, lm, mlp
from configs.validation import ConfigError
from trainer import data, models, plugins, sources

USER_MODULE = """
import keras
import numpy as np

def model(width=8, classes=3):
    inputs = keras.Input((4,), name="features")
    hidden = keras.layers.Dense(width, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(classes)(hidden))

def two_inputs():
    a, b = keras.Input((4,), name="a"), keras.Input((2,), name="b")
    x = keras.layers.Concatenate()([a, b])
    return keras.Model({"a": a, "b": b}, keras.layers.Dense(3)(x))

def not_a_model():
    return "a string"

def broken(width=8):
    raise RuntimeError("out of\\nideas")

class Records:
    def __init__(self, n, dicts=False, weights=False):
        self.n, self.dicts, self.weights = n, dicts, weights
    def __len__(self):
        return self.n
    def __getitem__(self, i):
        x = np.full((4,), i, np.float32)
        if self.dicts:
            return {"a": x, "b": np.ones((2,), np.float32)}, np.int32(i % 3)
        if self.weights:
            return x, np.int32(i % 3), np.float32(1.0)
        return x, np.int32(i % 3)

def dataset(n=40, dicts=False, weights=False):
    return Records(n, dicts, weights), Records(8, dicts)

def no_validation():
    return Records(16), None

def a_list():
    return [1, 2, 3]

def bad_records():
    return [np.zeros(3)] * 4, None

def my_loss(y_true, y_pred):
    return keras.ops.mean(keras.ops.square(y_pred))

class MyMetric(keras.metrics.Mean):
    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(keras.ops.mean(y_pred))
"""


@pytest.fixture
def user(tmp_path, monkeypatch):
    (tmp_path / "user_pkg").mkdir()
    (tmp_path / "user_pkg" / "__init__.py").write_text("")
    (tmp_path / "user_pkg" / "factories.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "user_pkg.factories"


def _user_config(module, **model_kwargs):
    config = base.get_config()
    config.model.name = f"{module}:model"
    config.model.kwargs = model_kwargs
    config.data.name = f"{module}:dataset"
    config.data.kwargs = {}
    config.data.global_batch_size = 8
    config.trainer.steps_per_epoch = 4
    return config


def _error(fn, *args):
    with pytest.raises(ConfigError) as info:
        fn(*args)
    assert "\n" not in str(info.value), str(info.value)
    return info.value


def test_builtins_are_registry_entries_named_in_the_schema():
    assert tuple(models.REGISTRY) == base.BUILTIN_MODELS
    assert tuple(sources.REGISTRY) == base.BUILTIN_DATA
    assert plugins.resolve("model.name", "mlp", models.REGISTRY) is models.mlp


def test_user_model_trains_with_loss_and_metrics_by_name(user):
    config = _user_config(user, width=5)
    model = models.build(config)
    assert [layer.units for layer in model.layers if hasattr(layer, "units")] == [5, 3]
    assert isinstance(model.loss, keras.losses.SparseCategoricalCrossentropy)
    assert model.loss.get_config()["from_logits"] is True
    splits = data.load_splits(config.data)
    x = np.stack([splits.train[i][0] for i in range(8)])
    y = np.stack([splits.train[i][1] for i in range(8)])
    logs = model.fit(x, y, epochs=1, verbose=0).history
    assert set(logs) == {"loss", "accuracy"}


def test_losses_and_metrics_identifiers_and_import_paths(user):
    config = _user_config(user)
    config.model.loss = "mse"
    assert isinstance(models.build_loss(config.model), keras.losses.MeanSquaredError)
    config.model.loss = "BinaryCrossentropy"
    config.model.from_logits = False
    loss = models.build_loss(config.model)
    assert isinstance(loss, keras.losses.BinaryCrossentropy) and not loss.from_logits
    config.model.loss = f"{user}:my_loss"
    assert models.build_loss(config.model).__name__ == "my_loss"
    config.model.metrics = ("mae", f"{user}:MyMetric")
    built = models.build_metrics(config.model)
    assert built[0] == "mae" and type(built[1]).__name__ == "MyMetric"
    config.model.loss = "nonsense_loss"
    assert _error(models.build_loss, config.model).field == "model.loss"
    config.model.metrics = ("accuracy", "nonsense_metric")
    assert _error(models.build_metrics, config.model).field == "model.metrics[1]"


@pytest.mark.parametrize(
    "name,kwargs,field,says",
    [
        ("resnet", {}, "model.name", "unknown built-in"),
        ("no_such_pkg.mod:model", {}, "model.name", "cannot import module 'no_such_pkg.mod'"),
        ("{u}:missing", {}, "model.name", "has no attribute 'missing'"),
        ("{u}:model", {"depth": 3}, "model.kwargs.depth", "not an argument of"),
        ("{u}:not_a_model", {}, "model.name", "returned str"),
        ("{u}:broken", {}, "model.name", "raised RuntimeError: out of ideas"),
        ("mlp", {"hidden_sizes": (0,)}, "model.kwargs.hidden_sizes", "ints > 0"),
        ("transformer_lm", {"num_layers": 0}, "model.kwargs.num_layers", "> 0"),
        ("transformer_lm", {"embed_dim": 30}, "model.kwargs.embed_dim", "divisible"),
    ],
)
def test_bad_models_are_one_line_config_errors(user, name, kwargs, field, says):
    config = mlp.get_config()
    config.model.name = name.format(u=user)
    config.model.kwargs = kwargs
    error = _error(models.build_model, config.model)
    assert error.field == field and says in str(error), str(error)
    assert f"Received: {field}=" in str(error)


@pytest.mark.parametrize(
    "name,kwargs,field,says",
    [
        ("imagenet", {}, "data.name", "unknown built-in"),
        ("{u}:dataset", {"size": 3}, "data.kwargs.size", "not an argument"),
        ("{u}:a_list", {}, "data.name", "must return (train, validation)"),
        ("{u}:bad_records", {}, "data.name", "records must be (x, y)"),
        ("{u}:dataset", {"n": 0}, "data.name", "train split is empty"),
        ("digits", {"validation_fraction": 1.5}, "data.kwargs.validation_fraction", "(0, 1)"),
    ],
)
def test_bad_data_are_one_line_config_errors(user, name, kwargs, field, says):
    config = mlp.get_config()
    config.data.name = name.format(u=user)
    config.data.kwargs = kwargs
    error = _error(data.load_splits, config.data)
    assert error.field == field and says in str(error), str(error)


def test_dict_inputs_and_sample_weights_batch_and_train(user):
    config = _user_config(user)
    config.model.name = f"{user}:two_inputs"
    config.data.kwargs = {"dicts": True}
    model = models.build(config)
    splits = data.load_splits(config.data)
    from trainer.mesh import DataShard  # noqa: PLC0415

    ds = data.train_dataset(
        splits.train, seed=0, global_batch_size=8, shard=DataShard(0, 1), start_step=0, num_steps=3
    )
    history = model.fit(ds, epochs=1, steps_per_epoch=3, verbose=0).history
    assert np.isfinite(history["loss"][0])
    config.data.kwargs = {"weights": True}
    splits = data.load_splits(config.data)
    assert len(splits.train[0]) == 3


def test_validation_split_may_be_none_only_without_validation_steps(user):
    config = _user_config(user)
    config.data.name = f"{user}:no_validation"
    splits = data.load_splits(config.data)
    from trainer.mesh import DataShard  # noqa: PLC0415

    with pytest.raises(ConfigError, match="no validation split"):
        data.validation_dataset(
            splits.validation, global_batch_size=8, shard=DataShard(0, 1), num_steps=1
        )


def test_lm_seq_len_follows_the_data_by_reference():
    config = lm.get_config("tiny")
    config.data.kwargs.seq_len = 24
    model = models.build_model(config.model)
    assert model.input_shape == (None, 24)


def test_dtype_policies_and_the_global_policy_is_left_alone():
    config = lm.get_config("tiny")
    for policy, variable in (("mixed_bfloat16", "float32"), ("bfloat16", "bfloat16")):
        config.trainer.dtype_policy = policy
        model = models.build(config)
        dense = model.get_layer("block0_mlp_in")
        assert dense.dtype_policy.name == policy and dense.kernel.dtype == variable
        assert model.get_layer("lm_head").compute_dtype == "float32"
    assert keras.config.dtype_policy().name == "float32"
