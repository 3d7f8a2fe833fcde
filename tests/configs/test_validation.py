"""Every config failure is one line naming the field and echoing the value."""

import pytest

from configs import base, lm, mlp, validation
from configs.validation import ConfigError, parse_save_freq, resolve_mesh_shape, validate


def _lm():
    return lm.get_config()


@pytest.mark.parametrize(
    "config",
    [
        lm.get_config(),
        lm.get_config("tiny"),
        mlp.get_config(),
        mlp.get_config("tiny"),
        base.get_config(),
    ],
)
def test_shipped_configs_are_valid(config):
    assert validate(config, num_devices=8, num_processes=2) is not None


def test_unknown_preset_is_refused():
    with pytest.raises(ValueError, match="Received: 'huge'"):
        lm.get_config("huge")


def _expect(config, field, received, **kwargs):
    with pytest.raises(ConfigError) as info:
        validate(config, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    assert info.value.field == field, message
    assert f"Received: {field}=" in message and received in message, message


def test_unknown_keys():
    c = _lm()
    with c.unlocked():
        c.trainer.bogus = 1
    _expect(c, "trainer.bogus", "1")
    c = _lm()
    with c.unlocked():
        c.model.depth = 3
    _expect(c, "model.depth", "3")
    c = _lm()
    with c.unlocked():
        c.extra = 1
    _expect(c, "extra", "1")


def test_wrong_types():
    # ConfigDict refuses these on override; a config file may still build them.
    c = _lm().to_dict()
    c["trainer"]["epochs"] = "three"
    _expect(c, "trainer.epochs", "'three'")
    c = _lm().to_dict()
    c["checkpoint"]["save_on_background"] = 1
    _expect(c, "checkpoint.save_on_background", "1")
    c = _lm().to_dict()
    c["optimizer"]["learning_rate"] = "fast"
    _expect(c, "optimizer.learning_rate", "'fast'")
    c = _lm()
    with c.unlocked():
        c.model.name = "resnet"
    _expect(c, "model.name", "'resnet'")


def test_mesh_shape_must_match_device_count():
    c = _lm()
    c.mesh.shape = (3, 3)
    _expect(c, "mesh.shape", "(3, 3)", num_devices=8)
    c.mesh.shape = (-1, 3)
    _expect(c, "mesh.shape", "(-1, 3)", num_devices=8)
    c.mesh.shape = (-1, -1)
    _expect(c, "mesh.shape", "(-1, -1)", num_devices=8)
    c.mesh.shape = (0, 8)
    _expect(c, "mesh.shape", "(0, 8)", num_devices=8)
    assert resolve_mesh_shape((-1, 2), 8) == (4, 2)
    assert resolve_mesh_shape((2, 4), 8) == (2, 4)


def test_axis_names():
    c = _lm()
    c.mesh.axis_names = ("batch", "model")
    _expect(c, "mesh.axis_names", "('batch', 'model')")
    c.mesh.axis_names = ("data",)
    _expect(c, "mesh.axis_names", "('data',)")


def test_layout_rules_name_mesh_axes():
    c = _lm()
    c.mesh.layout_rules = ((r"mlp_in/kernel$", (None, "tensor")),)
    _expect(c, "mesh.layout_rules[0]", "tensor")
    c.mesh.layout_rules = (("(", (None, "model")),)
    _expect(c, "mesh.layout_rules[0]", "(")
    c.mesh.layout_rules = (("x", "model"),)
    _expect(c, "mesh.layout_rules[0]", "model")


def test_global_batch_divisibility():
    c = _lm()
    c.data.global_batch_size = 30  # mesh (-1, 2) on 8 devices: data axis 4.
    _expect(c, "data.global_batch_size", "30", num_devices=8)
    c = mlp.get_config()
    c.data.global_batch_size = 66  # data axis 2, 3 processes.
    _expect(c, "data.global_batch_size", "66", num_devices=2, num_processes=4)


@pytest.mark.parametrize(
    "section,key,value",
    [
        ("trainer", "epochs", 0),
        ("trainer", "steps_per_epoch", -1),
        ("trainer", "validation_steps", -2),
        ("trainer", "log_every", 0),
        ("data", "global_batch_size", 0),
        ("optimizer", "warmup_steps", -1),
        ("optimizer", "gradient_accumulation_steps", 0),
        ("trainer", "steps_per_execution", 0),
        ("optimizer", "learning_rate", -0.1),
        ("checkpoint", "max_to_keep", 0),
        ("checkpoint", "keep_best", -1),
    ],
)
def test_negative_or_zero_counts(section, key, value):
    c = _lm()
    c[section][key] = value
    _expect(c, f"{section}.{key}", str(value))


def test_checkpoint_section_is_checked_by_the_callback_options():
    c = _lm()
    c.checkpoint.snapshot = "disk"
    _expect(c, "checkpoint.snapshot", "'disk'")
    c = _lm()
    c.checkpoint.keep_period = 0
    _expect(c, "checkpoint.keep_period", "0")
    c = _lm()
    c.checkpoint.keep_best = 2
    c.checkpoint.initial_value_threshold = 0.5
    options = validation.checkpoint_options(c.checkpoint)
    assert (options.keep_best, options.initial_value_threshold, options.max_to_keep) == (2, 0.5, 2)
    d = _lm().to_dict()
    d["checkpoint"]["enabled"] = "yes"
    _expect(d, "checkpoint.enabled", "'yes'")


def test_save_freq():
    assert parse_save_freq("epoch") == "epoch"
    assert parse_save_freq("25") == 25
    assert parse_save_freq(7) == 7
    c = _lm()
    c.checkpoint.save_freq = "sometimes"
    _expect(c, "checkpoint.save_freq", "'sometimes'")
    c.checkpoint.save_freq = "0"
    _expect(c, "checkpoint.save_freq", "0")


def test_dcn_shape_multiplies_the_slice_mesh():
    c = _lm()
    c.mesh.shape, c.mesh.dcn_shape = (-1, 2), (2, 1)
    # 2 slices of 8 devices: each slice (4, 2), globally (8, 2).
    assert validate(c, num_devices=16) == (8, 2)
    c.mesh.shape, c.mesh.dcn_shape = (4, 1), (1, 2)
    assert validate(c, num_devices=8) == (4, 2)
    c.mesh.dcn_shape = ()
    assert validate(c, num_devices=4) == (4, 1)


@pytest.mark.parametrize(
    "dcn, devices, received",
    [
        ((2,), 16, "(2,)"),  # One entry per mesh axis.
        ((2, 0), 16, "(2, 0)"),
        ((2, "1"), 16, "(2, '1')"),
        ((3, 1), 16, "(3, 1)"),  # 3 slices do not divide 16 devices.
    ],
)
def test_bad_dcn_shape(dcn, devices, received):
    c = _lm()
    c.mesh.shape, c.mesh.dcn_shape = (-1, 2), dcn
    _expect(c, "mesh.dcn_shape", received, num_devices=devices)
