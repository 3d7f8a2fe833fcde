"""KerasHub models: sizes or a local preset, the backbone's own layouts, "auto" on top."""

import os
import sys

import keras
import numpy as np
import pytest
from absl import logging

try:
    import keras_hub
except ImportError:
    if os.environ.get("CI"):
        raise  # CI installs the extra (make setup): these tests must run there.
    pytest.skip("needs the .[hub] extra (README, KerasHub)", allow_module_level=True)

from configs import gemma, validation
from tests.helpers import largest_device_share
from trainer import hub, mesh, models, train

MESH = ((4, 2), ("data", "model"))
# Small backbones whose kernels are over auto_min_size (2**14) elements.
SMALL = {
    "gemma": {**gemma.SIZES["gemma"], "vocabulary_size": 1024},
    "llama": {**gemma.SIZES["llama"], "vocabulary_size": 1024},
}


def _config(family="gemma", arg="tiny", **kwargs):
    words = [w for w in (arg, "llama" if family == "llama" else None) if w]
    config = gemma.get_config(",".join(words) or None)
    if kwargs:
        config.model.kwargs = kwargs
    return config


def _build(config, layout_rules=(), shape=MESH[0], names=MESH[1]):
    distribution = mesh.build_distribution(
        shape,
        names,
        layout_rules,
        auto_min_size=config.mesh.auto_min_size,
        model_layout=models.layout_map_fn(config.model),
    )
    with distribution.scope():
        keras.utils.set_random_seed(0)
        return models.build(config)


def _specs(model) -> dict:
    return {v.path: tuple(v.value.sharding.spec) for v in model.weights}


def test_keras_hub_runs_without_tensorflow():
    assert keras_hub.__version__
    assert "tensorflow" not in sys.modules and "tensorflow_text" not in sys.modules


@pytest.mark.parametrize("family", ["gemma", "llama"])
def test_no_explicit_rule_means_the_backbones_layout_map(family):
    model = _build(_config(family))
    specs = _specs(model)
    assert specs["token_embedding/embeddings"] == ("model", "data")
    block = (
        "decoder_block_0/attention" if family == "gemma" else "transformer_layer_0/self_attention"
    )
    assert specs[f"{block}/query/kernel"] == ("model", "data", None)
    # The map was used: the kernel really is split over `model` and `data`.
    kernel = next(v for v in model.weights if v.path == f"{block}/query/kernel")
    shard = kernel.value.addressable_shards[0].data
    assert shard.shape[0] == kernel.shape[0] // 2 and shard.shape[1] == kernel.shape[1] // 4
    # The CausalLM inside, over token ids: logits of the vocabulary for each position.
    logits = model.predict(np.zeros((4, 8), "int32"), verbose=0)
    assert logits.shape == (4, 8, 256) and logits.dtype == np.float32


def test_explicit_rules_replace_the_map_unless_backbone_is_named():
    rule = (r"token_embedding/embeddings$", (None, "model"))
    specs = _specs(_build(_config(), (rule,)))
    assert specs["token_embedding/embeddings"] == (None, "model")
    assert specs["decoder_block_0/attention/query/kernel"] in ((), (None, None, None))
    specs = _specs(_build(_config(), (rule, "backbone")))
    assert specs["token_embedding/embeddings"] == (None, "model")  # The first match wins.
    assert specs["decoder_block_0/attention/query/kernel"] == ("model", "data", None)


def test_backbone_entry_needs_a_model_with_layouts_and_a_model_axis():
    config = validation.validate
    mlp = _config()
    mlp.model.name, mlp.model.kwargs = "mlp", {}
    with pytest.raises(validation.ConfigError) as error:
        _build(mlp, ("backbone",))
    assert str(error.value).startswith("config.mesh.layout_rules: 'backbone' needs")
    with pytest.raises(validation.ConfigError) as error:
        _build(_config(), ("backbone",), shape=(8,), names=("data",))
    assert str(error.value).startswith("config.mesh.axis_names:")
    # Without the entry, a mesh with no `model` axis is data parallel as for any model.
    assert set(_specs(_build(_config(), (), shape=(8,), names=("data",))).values()) <= {
        (),
        (None,),
        (None, None),
        (None, None, None),
    }
    good = _config()
    good.mesh.layout_rules = ("auto", "backbone")
    assert config(good, num_devices=8, num_processes=2) == (4, 2)


def test_auto_with_the_layout_map_holds_at_most_a_sixth_per_device():
    shares = {}
    for family, sizes in SMALL.items():
        config = _config(family, None, **sizes)
        shares[family] = {
            "replicated": largest_device_share(_build(config, (), (8,), ("data",))),
            "get_layout_map": largest_device_share(_build(config, ())),
            "auto+get_layout_map": largest_device_share(_build(config, ("auto",))),
        }
    logging.info("largest per-device share of parameters + optimizer state: %s", shares)
    print("largest per-device share (KerasHub backbones, (4, 2) mesh):", shares)
    for family, share in shares.items():
        assert share["replicated"] == 1.0, family
        assert share["auto+get_layout_map"] <= 1 / 6, family
    # Llama's untied output embedding is left replicated by its map; "auto" shards it.
    assert shares["llama"]["get_layout_map"] > 1 / 6
    assert shares["gemma"]["get_layout_map"] <= 1 / 6  # Gemma's map covers every kernel.


class Recorded(np.ndarray):
    """A host array that records the index of every read."""

    reads: list

    def __getitem__(self, index):
        self.reads.append(index)
        return np.asarray(self)[index]


def test_a_host_array_is_laid_out_from_each_devices_slice_alone():
    distribution = mesh.build_distribution(*MESH, ((r"w$", ("model", "data")),))
    value = np.arange(64 * 32, dtype=np.float32).reshape(64, 32)
    recorded = value.view(Recorded)
    recorded.reads = []
    with distribution.scope():
        variable = keras.Variable(np.zeros_like(value), name="w")
    assert tuple(variable.value.sharding.spec) == ("model", "data")
    keras_conversion = keras.Variable._convert_to_tensor
    with hub.shard_wise_assign():
        variable.assign(recorded)
    assert keras.Variable._convert_to_tensor is keras_conversion  # Restored on the way out.
    np.testing.assert_array_equal(np.asarray(variable.value), value)
    assert tuple(variable.value.sharding.spec) == ("model", "data")
    assert len(recorded.reads) == 8  # One read per device, of its (32, 8) shard only.
    for index in recorded.reads:
        assert value[index].shape == (32, 8)
    recorded.reads = []
    variable.assign(recorded * 2)  # Outside: Keras converts the whole array at once.
    assert recorded.reads == []
    np.testing.assert_array_equal(np.asarray(variable.value), value * 2)


@pytest.mark.parametrize("family", ["gemma", "llama"])
def test_a_local_preset_loads_its_weights_under_the_distribution(tmp_path, family):
    sizes = gemma.SIZES[family] | {"hidden_dim": 32, "intermediate_dim": 64, "num_layers": 1}
    cls = getattr(keras_hub.models, f"{family.capitalize()}Backbone")
    keras.utils.set_random_seed(7)
    backbone = cls(**({**sizes, "head_dim": 8} if family == "gemma" else sizes))
    backbone.save_to_preset(str(tmp_path / "preset"))
    saved = {v.path: np.asarray(v.value) for v in backbone.weights}

    model = _build(_config(family, "tiny", preset=str(tmp_path / "preset")), ("auto",))
    lm = model.get_layer("causal_lm")
    assert isinstance(lm, keras_hub.models.CausalLM) and lm.preprocessor is None
    got = {v.path: v for v in lm.backbone.weights}
    assert got.keys() == saved.keys()
    for path, value in saved.items():
        np.testing.assert_array_equal(np.asarray(got[path].value), value, err_msg=path)
    assert tuple(got["token_embedding/embeddings"].value.sharding.spec) == ("model", "data")

    fresh = _build(
        _config(family, "tiny", preset=str(tmp_path / "preset"), load_weights=False), ("auto",)
    )
    embeddings = next(v for v in fresh.weights if v.path == "token_embedding/embeddings")
    assert embeddings.shape == saved["token_embedding/embeddings"].shape
    assert not np.array_equal(np.asarray(embeddings.value), saved["token_embedding/embeddings"])


@pytest.mark.parametrize(
    "kwargs,field,received",
    [
        ({"vocabulary_size": 8, "hiddn_dim": 4}, "model.kwargs.hiddn_dim", "4"),
        ({"vocabulary_size": 8}, "model.kwargs.num_layers", "None"),
        ({"preset": "/nonexistent/preset"}, "model.kwargs.preset", "'/nonexistent/preset'"),
        ({"preset": "gs://bucket/preset"}, "model.kwargs.preset", "'gs://bucket/preset'"),
        ({"preset": "/tmp", "num_layers": 2}, "model.kwargs.num_layers", "2"),
        ({"preset": "/tmp", "load_weights": "yes"}, "model.kwargs.load_weights", "'yes'"),
    ],
)
def test_bad_kwargs_are_one_line_naming_the_field(kwargs, field, received):
    with pytest.raises(validation.ConfigError) as error:
        models.build_model(_config(**kwargs).model)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"config.{field}:")
    assert message.endswith(f"Received: {field}={received}")


def test_a_preset_config_trains(tmp_path):
    keras.utils.set_random_seed(3)
    sizes = {**gemma.SIZES["gemma"], "hidden_dim": 32, "intermediate_dim": 64, "head_dim": 8}
    backbone = keras_hub.models.GemmaBackbone(**sizes)
    backbone.save_to_preset(str(tmp_path / "preset"))
    tokens = (np.arange(4096) * 7 % 251).astype(np.uint16)
    tokens.tofile(tmp_path / "t.bin")
    config = gemma.get_config(f"tiny,preset={tmp_path / 'preset'}")
    assert config.model.kwargs.to_dict() == {
        "preset": str(tmp_path / "preset"),
        "load_weights": True,
    }
    config.data.kwargs.train = config.data.kwargs.validation = str(tmp_path / "t.bin")
    config.trainer.steps_per_epoch, config.trainer.validation_steps = 2, 0
    config.checkpoint.enabled = False
    assert validation.validate(config, num_devices=8, num_processes=1) == (4, 2)
    (tmp_path / "run").mkdir()
    result = train.train(config, tmp_path / "run")
    assert result.final_step == 2 and np.isfinite(result.history["loss"]).all()


def test_without_the_extra_the_error_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "keras_hub", None)  # As if not installed.
    with pytest.raises(validation.ConfigError) as error:
        models.build_model(_config().model)
    message = str(error.value)
    assert message.startswith("config.model.name: KerasHub models need keras-hub")
    assert "pip install --no-deps keras-hub==0.32.0" in message and "\n" not in message
    assert message.endswith("Received: model.name='gemma'")
