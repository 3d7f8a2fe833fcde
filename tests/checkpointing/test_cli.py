"""python -m checkpointing list / inspect / export, and bad input (exit 2)."""

import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

import checkpointing
from checkpointing.__main__ import main
from tests.checkpointing import custom_layers
from tests.checkpointing.common import make_data, make_model
from tests.checkpointing.procs import REPO


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cli") / "ckpt"
    x, y = make_data()
    model = make_model()
    callback = checkpointing.OrbaxCheckpoint(
        directory, save_freq=4, max_to_keep=None, metadata={"run": "cli"}
    )
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[callback])
    return directory, {v.path: np.asarray(v.value) for v in model.weights}


def test_list(trained, capsys):
    directory, _ = trained
    assert main(["list", str(directory)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["4", "8"]
    assert "1 proc x" in lines[-1] and "loss=" in lines[-1]


def test_inspect(trained, capsys):
    directory, _ = trained
    assert main(["inspect", str(directory), "--step", "4"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["step"] == 4
    assert report["record"]["progress"] == {"global_step": 4, "epoch": 0, "step_in_epoch": 4}
    assert report["record"]["metadata"] == {"run": "cli"}
    assert report["arrays"]["trainable_variables/dense_1/kernel"] == "float32[8,16]"
    assert {"model_config", "podfit", "pytree"} <= set(report["checkpointables"])


def test_export(trained, tmp_path, capsys):
    directory, weights = trained
    out = tmp_path / "model.keras"
    assert main(["export", str(directory), str(out)]) == 0
    exported = keras.saving.load_model(out)
    for variable in exported.weights:
        np.testing.assert_array_equal(np.asarray(variable.value), weights[variable.path])
    assert int(exported.optimizer.iterations) == 8


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["list", "{missing}"], "Received: DIR={missing}"),
        (["inspect", "{empty}"], "no committed checkpoint step"),
        (["inspect", "{dir}", "--step", "5"], "Received: --step=5"),
        (["export", "{dir}", "model.h5"], "Received: OUT=model.h5"),
        (["export", "{dir}", "out.keras", "--step", "99"], "Received: --step=99"),
        (
            ["export", "{dir}", "{tmp}/out.keras", "--import", "podfit_no_such_module"],
            "Received: --import=['podfit_no_such_module']",
        ),
        (["export", "{weights_only}", "{tmp}/out.keras"], "no model config"),
        (["frobnicate", "{dir}"], "invalid choice"),
        (["inspect", "{dir}", "--step", "four"], "Received: inspect"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(trained, tmp_path, capsys, argv, expected):
    directory, _ = trained
    (tmp_path / "empty").mkdir()
    weights_only = tmp_path / "weights_only"
    if "{weights_only}" in argv:
        x, y = make_data()
        callback = checkpointing.OrbaxCheckpoint(weights_only, save_weights_only=True)
        make_model().fit(x, y, batch_size=64, epochs=1, verbose=0, callbacks=[callback])
    names = {
        "missing": tmp_path / "missing",
        "empty": tmp_path / "empty",
        "dir": directory,
        "tmp": tmp_path,
        "weights_only": weights_only,
    }
    argv = [a.format(**names) for a in argv]
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("checkpointing: ")
    assert expected.format(**names) in err
    assert captured.out == ""
    assert not (tmp_path / "out.keras").exists()


def _cli(*args: str, cwd) -> subprocess.CompletedProcess:
    """`python -m checkpointing ARGS` in a fresh interpreter that has imported nothing."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "KERAS_BACKEND": "jax"}
    return subprocess.run(
        [sys.executable, "-m", "checkpointing", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _fit(directory, model) -> keras.Model:
    x, y = make_data()
    callback = checkpointing.OrbaxCheckpoint(directory, save_freq=4)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[callback])
    return model


def _assert_same_weights(exported: keras.Model, model: keras.Model) -> None:
    for variable, expected in zip(exported.weights, model.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(variable.value), np.asarray(expected.value))


def test_export_imports_the_module_the_step_records_for_a_custom_layer(tmp_path):
    directory, out = tmp_path / "ckpt", tmp_path / "model.keras"
    model = _fit(
        directory, custom_layers.make_model()
    )  # Records tests.checkpointing.custom_layers.
    done = _cli("export", str(directory), str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == f"exported step 4 of {directory} to {out}"
    exported = keras.saving.load_model(out)
    assert isinstance(exported.get_layer("scale"), custom_layers.Scale)
    _assert_same_weights(exported, model)


GHOST = """
import keras


@keras.saving.register_keras_serializable(package="podfit_cli")
class Ghost(keras.layers.Layer):
    def call(self, inputs):
        return inputs
"""


def test_export_of_a_layer_defined_in_the_training_script_needs_import(tmp_path):
    # Trained in a script: the class' module is __main__, which the step cannot name.
    namespace = {"__name__": "__main__"}
    exec(GHOST, namespace)
    inputs = keras.Input(shape=(8,))
    hidden = namespace["Ghost"](name="ghost")(keras.layers.Dense(4, name="dense_1")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1, name="dense_2")(hidden))
    model.compile(optimizer="adam", loss="mse")
    directory, out = tmp_path / "ckpt", tmp_path / "model.keras"
    _fit(directory, model)
    (tmp_path / "ghost_layers.py").write_text(GHOST)

    done = _cli("export", str(directory), str(out), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("checkpointing: step 4's model config names")
    assert "defined in the script that trained it" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr

    done = _cli("export", str(directory), str(out), "--import", "ghost_layers", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_same_weights(keras.saving.load_model(out), model)


def test_export_of_a_damaged_step_exits_1(trained, tmp_path, capsys):
    directory, _ = trained
    damaged = tmp_path / "damaged"
    shutil.copytree(directory, damaged)
    data = [p for p in (damaged / "8").rglob("*") if p.is_file() and "/d/" in str(p)]
    victim = max(data, key=lambda p: p.stat().st_size)
    victim.write_bytes(b"\0" * victim.stat().st_size)
    assert main(["export", str(damaged), str(tmp_path / "out.keras")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "step 8 of" in err and "is damaged" in err, err
    assert not (tmp_path / "out.keras").exists()


def test_python_dash_m_reports_bad_input_without_traceback(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    done = subprocess.run(
        [sys.executable, "-m", "checkpointing", "list", str(tmp_path / "nope")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert f"Received: DIR={tmp_path / 'nope'}" in done.stderr
