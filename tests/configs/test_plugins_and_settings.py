"""Schema checks of the plug-in fields and training settings, and multi-type fields."""

import pytest
from absl import flags
from ml_collections import config_flags

from configs import base, lm, mlp
from configs.validation import ConfigError, validate


def _expect(config, field, received):
    with pytest.raises(ConfigError) as info:
        validate(config)
    message = str(info.value)
    assert "\n" not in message and info.value.field == field, message
    assert f"Received: {field}=" in message and received in message, message


def test_import_paths_pass_the_schema_and_malformed_names_do_not():
    c = mlp.get_config()
    c.model.name = "my_pkg.models:build"
    c.data.name = "my_pkg.data:load"
    c.model.kwargs = {"anything": [1, 2], "nested": {"a": 1}}
    c.model.loss = "my_pkg.losses:focal"
    c.model.metrics = ("accuracy", "my_pkg.metrics:F1")
    validate(c)
    c.model.name = "my_pkg.models:"
    _expect(c, "model.name", "'my_pkg.models:'")
    c = mlp.get_config()
    c.data.name = "imagenet"
    _expect(c, "data.name", "'imagenet'")
    c = mlp.get_config()
    c.model.loss = "not a loss!"
    _expect(c, "model.loss", "'not a loss!'")
    c = mlp.get_config()
    c.model.metrics = ("accuracy", "top-5")
    _expect(c, "model.metrics[1]", "'top-5'")
    d = mlp.get_config().to_dict()
    d["model"]["kwargs"] = 3
    _expect(d, "model.kwargs", "3")
    d = mlp.get_config().to_dict()
    d["model"]["from_logits"] = "yes"
    _expect(d, "model.from_logits", "'yes'")


@pytest.mark.parametrize(
    "section,key,value,received",
    [
        ("optimizer", "schedule", "exponential", "'exponential'"),
        ("optimizer", "alpha", 1.5, "1.5"),
        ("optimizer", "decay_steps", -3, "-3"),
        ("optimizer", "warmup_steps", 500, "500"),  # >= the run's 240 optimizer steps
        ("optimizer", "gradient_accumulation_steps", 7, "7"),  # does not divide 80
        ("trainer", "dtype_policy", "float16", "'float16'"),
        ("trainer", "steps_per_execution", 3, "3"),  # does not divide 80
    ],
)
def test_training_settings_are_checked(section, key, value, received):
    c = lm.get_config()
    c.optimizer.schedule = "cosine"
    c[section][key] = value
    _expect(c, f"{section}.{key}", received)


def test_settings_that_fit_together():
    c = lm.get_config()
    c.optimizer.schedule = "cosine"
    c.optimizer.warmup_steps = 10
    c.optimizer.gradient_accumulation_steps = 4
    c.trainer.dtype_policy = "mixed_bfloat16"
    c.trainer.steps_per_execution = 2
    c.trainer.log_every = 10
    validate(c)
    c.checkpoint.save_freq = 6
    _expect(c, "optimizer.gradient_accumulation_steps", "4")
    c.checkpoint.save_freq = 5
    c.optimizer.gradient_accumulation_steps = 1
    _expect(c, "trainer.steps_per_execution", "2")


def _parse(tmp_path, body, *args):
    path = tmp_path / "user_config.py"
    path.write_text(
        "from configs import mlp\n\ndef get_config():\n    config = mlp.get_config()\n"
        + "".join(f"    {line}\n" for line in body)
        + "    return config\n"
    )
    argv = ["prog", f"--config={path}", *args]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=values, sys_argv=argv)
    values(argv)
    return values.config


def test_save_freq_takes_an_int_or_epoch_from_a_file_and_from_a_flag(tmp_path):
    assert _parse(tmp_path, ["config.checkpoint.save_freq = 20"]).checkpoint.save_freq == 20
    c = _parse(
        tmp_path, ["config.checkpoint.save_freq = 20"], "--config.checkpoint.save_freq=epoch"
    )
    assert c.checkpoint.save_freq == "epoch"
    c = _parse(tmp_path, [], "--config.checkpoint.save_freq=20")
    assert c.checkpoint.save_freq == 20 and validate(c) is None
    c = _parse(
        tmp_path, ["config.checkpoint.save_freq = 'epoch'"], "--config.checkpoint.save_freq=7"
    )
    assert c.checkpoint.save_freq == 7


def test_either_is_for_every_multi_type_field():
    ref = base.either(None)
    ref.set("a/path")
    ref.set(3)
    assert ref.get() == 3


@pytest.mark.parametrize(
    "value,received",
    [
        ((15, 10), "(15, 10)"),  # stop before start
        ((-1, 5), "(-1, 5)"),
        ((0, 5), "(0, 5)"),  # steps count from 1
        ((10, 241), "(10, 241)"),  # beyond the run's 240 optimizer steps
        ((10,), "(10,)"),
        (("a", "b"), "('a', 'b')"),
        ((None,), "(None,)"),  # what --config.trainer.profile_steps=None gives
    ],
)
def test_profile_steps_are_checked(value, received):
    c = lm.get_config()
    c.trainer.profile_steps = value
    _expect(c, "trainer.profile_steps", received)


def test_profile_steps_from_a_flag_and_the_switches(tmp_path):
    c = _parse(tmp_path, [], "--config.trainer.profile_steps=(10,15)")
    assert c.trainer.profile_steps == (10, 15) and validate(c) is None
    last = mlp.get_config().trainer.epochs * mlp.get_config().trainer.steps_per_epoch
    c = _parse(tmp_path, [], f"--config.trainer.profile_steps=({last},{last})")
    assert validate(c) is None  # The run's last step.
    c.trainer.steps_per_epoch //= 2
    _expect(c, "trainer.profile_steps", f"({last}, {last})")
    assert _parse(tmp_path, []).trainer.profile_steps == ()  # Off by default.
    c = _parse(tmp_path, [], "--config.trainer.tensorboard=False")
    assert c.trainer.tensorboard is False and validate(c) is None
    d = c.to_dict()  # ml-collections refuses these itself; a dict reaches the check.
    d["trainer"]["tensorboard"] = "yes"
    _expect(d, "trainer.tensorboard", "'yes'")
    d = mlp.get_config().to_dict()
    d["trainer"]["profile_all_processes"] = 1
    _expect(d, "trainer.profile_all_processes", "1")
