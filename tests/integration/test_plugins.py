"""A user's package outside the repository, only on PYTHONPATH, trains through podfit.

The package has a model factory and a data factory; the config file lives
outside the repository too. 2 processes x 4 devices; kill -9 mid-run and a
relaunch end bitwise equal to an uninterrupted run; the run then resumes on
1 process x 8 devices; a changed data seed is refused (exit 2, one line); the
trained model loads in a fresh interpreter the documented way.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from tests.helpers import (
    REPO,
    committed_steps,
    env,
    finals,
    kill_process_1_when,
    metrics,
    simulate_command,
)

pytestmark = pytest.mark.multiprocess

PACKAGE = '''
import time

import keras
import numpy as np


def classifier(features=8, width=32, classes=4):
    inputs = keras.Input((features,), name="features")
    x = keras.layers.Dense(width, activation="relu", name="hidden")(inputs)
    return keras.Model(inputs, keras.layers.Dense(classes, name="logits")(x))


class Blobs:
    """Records (x, label): label = the largest of the first 4 features."""

    def __init__(self, n, seed, features, delay_s):
        rng = np.random.default_rng(seed)
        self.x = rng.normal(size=(n, features)).astype(np.float32)
        self.y = self.x[:, :4].argmax(axis=1).astype(np.int32)
        self.delay_s = delay_s

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        time.sleep(self.delay_s)  # Slow reads so that a kill lands mid-run.
        return self.x[i], self.y[i]


def blobs(n=512, features=8, delay_s=0.0):
    return Blobs(n, 0, features, delay_s), Blobs(64, 1, features, 0.0)
'''

CONFIG = """
from configs import base


def get_config():
    config = base.get_config()
    config.model.name = "blobs_pkg.factories:classifier"
    config.model.kwargs = {"features": 8, "width": 32}
    config.data.name = "blobs_pkg.factories:blobs"
    config.data.kwargs = {"n": 512, "features": 8, "delay_s": 0.1}
    config.data.global_batch_size = 16
    config.mesh.shape = (-1,)
    config.mesh.axis_names = ("data",)
    config.optimizer.learning_rate = 1e-2
    config.trainer.epochs = 3
    config.trainer.steps_per_epoch = 8
    config.trainer.validation_steps = 1
    config.trainer.log_every = 1
    config.checkpoint.save_freq = 4
    config.checkpoint.max_to_keep = 10
    return config
"""


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    root = tmp_path_factory.mktemp("user")
    (root / "site" / "blobs_pkg").mkdir(parents=True)
    (root / "site" / "blobs_pkg" / "__init__.py").write_text("")
    (root / "site" / "blobs_pkg" / "factories.py").write_text(PACKAGE)
    (root / "conf").mkdir()
    (root / "conf" / "blobs.py").write_text(CONFIG)
    run_env = {**env(), "PYTHONPATH": f"{root / 'site'}{os.pathsep}{REPO}"}
    return root, run_env


def _simulate_cmd(processes, devices, root, workdir, *args):
    return simulate_command(
        processes, devices, f"--config={root / 'conf' / 'blobs.py'}", f"--workdir={workdir}", *args
    )


def _run(cmd, run_env, timeout=180):
    return subprocess.run(
        cmd, cwd=REPO, env=run_env, capture_output=True, text=True, timeout=timeout
    )


def test_users_package_trains_resumes_exactly_and_loads(user, tmp_path):
    root, run_env = user
    clean = tmp_path / "clean"
    r = _run(_simulate_cmd(2, 4, root, clean), run_env)
    assert r.returncode == 0, r.stdout[-3000:]
    losses = [m["loss"] for m in metrics(clean) if "epoch" not in m]
    assert len(losses) == 24 and losses[-1] < losses[0], losses
    expected = finals(clean)[0]["weights_sha256"]

    killed = tmp_path / "killed"
    code, out = kill_process_1_when(
        _simulate_cmd(2, 4, root, killed), killed, lambda: bool(committed_steps(killed)),
        run_env=run_env,
    )  # fmt: skip
    assert code != 0, out[-2000:]
    assert not finals(killed) and max(committed_steps(killed)) < 24

    r = _run(_simulate_cmd(2, 4, root, killed), run_env)
    assert r.returncode == 0, r.stdout[-3000:]
    assert "resumed from step" in r.stdout
    assert [d["weights_sha256"] for d in finals(killed)] == [expected, expected]

    # The same run continues on 1 process x 8 devices for a fourth epoch.
    r = _run(_simulate_cmd(1, 8, root, killed, "--config.trainer.epochs=4"), run_env)
    assert r.returncode == 0, r.stdout[-3000:]
    assert "resumed from step 24" in r.stdout
    assert finals(killed)[0]["final_step"] == 32

    # Another data seed would change the batches: refused, one line, exit 2.
    r = _run(
        _simulate_cmd(1, 8, root, killed, "--config.trainer.epochs=5", "--config.data.seed=1"),
        run_env,
    )
    assert r.returncode == 2, r.stdout[-3000:]
    lines = [line for line in r.stdout.splitlines() if "launcher: config." in line]
    assert len(lines) == 1 and "config.data.seed:" in lines[0], r.stdout[-3000:]
    assert "Received: data.seed=1" in lines[0]

    # The documented ways to load the trained model, in a fresh interpreter.
    out = tmp_path / "model.keras"
    r = _run(
        [sys.executable, "-m", "checkpointing", "export", f"{killed}/checkpoints", str(out)],
        run_env,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    load = textwrap.dedent(
        f"""
        import keras, numpy as np
        from trainer import models
        exported = keras.saving.load_model("{out}")
        model = models.load("{killed}")
        x = np.random.default_rng(0).normal(size=(4, 8))
        same = np.array_equal(exported.predict(x, verbose=0), model.predict(x, verbose=0))
        print(int(model.optimizer.iterations), model.output_shape, same)
        """
    )
    r = _run([sys.executable, "-c", load], run_env, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "32 (None, 4) True" in r.stdout
