"""python -m checkpointing list / inspect / export, and bad input (exit 2)."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import checkpointing
from checkpointing.__main__ import main
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
        (["frobnicate", "{dir}"], "invalid choice"),
        (["inspect", "{dir}", "--step", "four"], "Received: inspect"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(trained, tmp_path, capsys, argv, expected):
    directory, _ = trained
    (tmp_path / "empty").mkdir()
    names = {"missing": tmp_path / "missing", "empty": tmp_path / "empty", "dir": directory}
    argv = [a.format(**names) for a in argv]
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("checkpointing: ")
    assert expected.format(**names) in err
    assert captured.out == ""


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
