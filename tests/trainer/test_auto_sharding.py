"""layout_rules "auto": fully sharded data parallelism with or without tensor parallel rules."""

import keras
import numpy as np
import pytest
from absl import logging

import checkpointing
from configs import lm, validation
from tests.helpers import largest_device_share
from trainer import mesh, models, train

MESH = ((4, 2), ("data", "model"))


def _spec(variable) -> tuple:
    return tuple(variable.value.sharding.spec)


def test_auto_axes_picks_the_largest_free_dimension_the_data_axis_divides():
    assert mesh.auto_axes((256, 128), (None, None), 4, 1024) == ("data", None)
    assert mesh.auto_axes((128, 512), (None, None), 4, 1024) == (None, "data")
    # Rules naming `model` keep their dimensions; FSDP takes another one.
    assert mesh.auto_axes((128, 512), (None, "model"), 4, 1024) == ("data", "model")
    assert mesh.auto_axes((128, 4, 32), (None, "model", None), 4, 1024) == (
        "data",
        "model",
        None,
    )
    # 6 and 10 are not divisible by 4: the next largest dimension is.
    assert mesh.auto_axes((6, 8, 10), (None, None, None), 4, 1) == (None, "data", None)
    # Small, indivisible, already over `data`, or a data axis of 1: unchanged.
    assert mesh.auto_axes((512,), (None,), 4, 1024) == (None,)
    assert mesh.auto_axes((6, 10), (None, None), 4, 1) == (None, None)
    assert mesh.auto_axes((64, 64), ("data", None), 4, 1) == ("data", None)
    assert mesh.auto_axes((64, 64), (None, None), 1, 1) == (None, None)


def _lm(layout_rules, shape=MESH[0], names=MESH[1], **kwargs):
    config = lm.get_config(kwargs.pop("preset", None))
    for key, value in kwargs.items():
        setattr(config.mesh, key, value)
    distribution = mesh.build_distribution(
        shape, names, layout_rules, auto_min_size=config.mesh.auto_min_size
    )
    with distribution.scope():
        keras.utils.set_random_seed(0)
        return models.build(config)  # Optimizer slots built too.


def test_auto_shares_parameters_and_optimizer_state_over_the_mesh():
    rules = lm.get_config().mesh.layout_rules
    shares = {
        "replicated": largest_device_share(_lm(())),
        "rules": largest_device_share(_lm(rules)),
        "auto": largest_device_share(_lm(("auto",))),
        "auto+rules": largest_device_share(_lm(("auto", *rules))),
        "auto on (8,)": largest_device_share(_lm("auto", shape=(8,), names=("data",))),
    }
    logging.info("largest per-device share of parameters + optimizer state: %s", shares)
    print("largest per-device share (configs/lm.py LM, (4, 2) mesh):", shares)
    assert shares["replicated"] == 1.0
    assert shares["rules"] > 1 / 2  # Tensor parallel alone: a half and the rest.
    # FSDP alone shards over `data` (4 of the 8 devices): about a quarter.
    assert 1 / 6 < shares["auto"] < 1 / 3
    # With the rules' tensor parallelism, or over all 8 devices: at most 1/6.
    assert shares["auto+rules"] <= 1 / 6
    assert shares["auto on (8,)"] <= 1 / 6


def test_optimizer_slots_follow_their_variable_and_rules_keep_model_dims():
    rules = lm.get_config().mesh.layout_rules
    model = _lm(("auto", *rules))
    specs = {v.path: _spec(v) for v in model.trainable_variables}
    assert specs["block0_attention/query/kernel"] == ("data", "model", None)
    assert specs["block0_mlp_in/kernel"] == ("data", "model")
    assert specs["block0_mlp_out/kernel"] == ("model", "data")
    assert specs["token_embedding/embeddings"] == ("data", None)
    assert specs["block0_ln1/gamma"] in ((None,), ())  # Under auto_min_size.
    slots = 0
    for variable in model.trainable_variables:
        name = variable.path.replace("/", "_")
        for slot in model.optimizer.variables:
            if slot.path.split("/")[-1].startswith(name + "_"):
                assert _spec(slot) == _spec(variable), slot.path
                slots += 1
    assert slots == 2 * len(model.trainable_variables)  # AdamW: momentum and velocity.


def _train_config(layout_rules, tmp_path, name):
    config = lm.get_config("tiny")
    config.mesh.shape = MESH[0]
    config.mesh.layout_rules = layout_rules
    config.mesh.auto_min_size = 256  # The tiny LM's kernels: sharded.
    config.trainer.epochs = 5
    config.trainer.steps_per_epoch = 1  # One loss per step.
    config.trainer.validation_steps = 0
    config.checkpoint.enabled = False
    (tmp_path / name).mkdir()  # The launcher makes the workdir.
    return config, tmp_path / name


def test_auto_trains_with_the_losses_of_replicated(tmp_path):
    rules = lm.get_config().mesh.layout_rules
    replicated = train.train(*_train_config((), tmp_path, "replicated"))
    auto = train.train(*_train_config(("auto", *rules), tmp_path, "auto"))
    assert len(auto.history["loss"]) == 5
    np.testing.assert_allclose(auto.history["loss"], replicated.history["loss"], rtol=1e-5)
    assert auto.history["loss"][-1] < auto.history["loss"][0]


def _values(model):
    """Weights by path; optimizer variables by path without the optimizer's unique name."""
    weights = {v.path: np.asarray(v.value) for v in model.weights}
    slots = {
        "opt/" + v.path.split("/", 1)[-1]: np.asarray(v.value) for v in model.optimizer.variables
    }
    return {**weights, **slots}


@pytest.mark.parametrize("written,read", [("auto", ()), ((), "auto")])
def test_a_step_restores_across_auto_and_replicated(tmp_path, written, read):
    kwargs = {"preset": "tiny", "auto_min_size": 256}
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (32, 32), dtype=np.int32)
    y = rng.integers(0, 256, (32, 32), dtype=np.int32)
    source = _lm(written, **kwargs)
    with mesh.build_distribution(*MESH, written, auto_min_size=256).scope():
        source.fit(
            x,
            y,
            batch_size=16,
            epochs=1,
            verbose=0,
            callbacks=[checkpointing.OrbaxCheckpoint(tmp_path, max_to_keep=1)],
        )
    kernel = next(v for v in source.weights if v.path == "block0_mlp_in/kernel")
    assert ("data" in _spec(kernel)) == (written == "auto")
    saved = _values(source)
    target = _lm(read, **kwargs)
    with mesh.build_distribution(*MESH, read, auto_min_size=256).scope():
        restored = checkpointing.restore_latest(tmp_path, target)
    assert restored is not None and int(target.optimizer.iterations) == 2
    kernel = next(v for v in target.weights if v.path == "block0_mlp_in/kernel")
    assert ("data" in _spec(kernel)) == (read == "auto")
    got = _values(target)
    assert got.keys() == saved.keys()
    for path, value in got.items():
        np.testing.assert_array_equal(value, saved[path], err_msg=path)


@pytest.mark.parametrize(
    "field,value,received",
    [
        ("layout_rules", ("autox",), "mesh.layout_rules[0]='autox'"),
        ("layout_rules", ("auto", ("x", "model")), "mesh.layout_rules[1]='model'"),
        ("auto_min_size", -1, "mesh.auto_min_size=-1"),
        ("auto_min_size", 1.5, "mesh.auto_min_size=1.5"),
    ],
)
def test_bad_auto_settings_are_one_line_naming_the_field(field, value, received):
    config = lm.get_config("tiny").to_dict()  # A plain dict takes any type.
    config["mesh"][field] = value
    with pytest.raises(validation.ConfigError) as error:
        validation.validate(config, num_devices=8, num_processes=1)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"config.mesh.{field}")
    assert message.endswith(f"Received: {received}")


def test_auto_validates_alone_with_rules_and_as_a_string():
    config = lm.get_config("tiny")
    config.mesh.layout_rules = ("auto", *config.mesh.layout_rules)
    assert validation.validate(config, num_devices=8, num_processes=1) == (4, 2)
    config = lm.get_config("tiny").to_dict()
    config["mesh"]["layout_rules"] = "auto"
    assert validation.validate(config, num_devices=8, num_processes=1) == (4, 2)
    assert mesh.split_rules("auto") == (True, ())
    assert mesh.split_rules(("auto", ("k", (None,)))) == (True, (("k", (None,)),))
