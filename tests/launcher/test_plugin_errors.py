"""Bad plug-ins and settings exit 2 with one line naming the field, through the launcher.

Checks that need the user's module happen in the trainer, after the
distributed start; they still give one line and exit 2.
"""

import pytest

from tests.helpers import launcher

MLP = ("--config=configs/mlp.py:tiny", "--num_cpu_devices=1")

NOT_A_MODEL = """
from configs import mlp


def get_config():
    config = mlp.get_config("tiny")
    config.model.name = "trainer.sources:digits"  # returns (train, validation)
    config.model.kwargs = {}
    return config
"""


def _one_line(r, field, *texts):
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("launcher:")]
    assert len(lines) == 1, r.stderr[-3000:]
    assert lines[0].startswith(f"launcher: config.{field}:"), lines[0]
    assert f"Received: {field}=" in lines[0]
    for text in texts:
        assert text in lines[0], lines[0]


@pytest.mark.parametrize(
    "flag,field,text",
    [
        ("--config.model.name=no_such_pkg.models:build", "model.name", "cannot import module"),
        ("--config.model.name=trainer.sources:digits", "model.kwargs.dropout", "not an argument"),
        ("--config.data.name=trainer.models:mlp", "data.kwargs.validation_fraction", "not an argument"),
        ("--config.model.loss=hinge_of_doom", "model.loss", "not a Keras loss"),
    ],
)  # fmt: skip
def test_bad_plugins_found_by_the_trainer(tmp_path, flag, field, text):
    _one_line(launcher(*MLP, f"--workdir={tmp_path}", flag), field, text)


def test_a_factory_returning_something_else_than_a_model(tmp_path):
    (tmp_path / "bad.py").write_text(NOT_A_MODEL)
    r = launcher(f"--config={tmp_path}/bad.py", "--num_cpu_devices=1", f"--workdir={tmp_path}/w")
    _one_line(r, "model.name", "must return a keras.Model; it returned tuple")


@pytest.mark.parametrize(
    "flag,field",
    [
        ("--config.optimizer.schedule=exponential", "optimizer.schedule"),
        ("--config.optimizer.gradient_accumulation_steps=4", "optimizer.gradient_accumulation_steps"),
        ("--config.trainer.dtype_policy=float16", "trainer.dtype_policy"),
        ("--config.trainer.steps_per_execution=4", "trainer.steps_per_execution"),
        ("--config.model.name=resnet", "model.name"),
    ],
)  # fmt: skip
def test_bad_settings_before_any_device_work(tmp_path, flag, field):
    _one_line(launcher(*MLP, f"--workdir={tmp_path}", flag), field)
