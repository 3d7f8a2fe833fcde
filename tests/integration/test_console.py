"""What a person sees on the console of a simulated run, and what goes to the log files."""

import os
import re
import subprocess
import sys

import pytest

from tests.helpers import REPO, committed_steps, env, simulate

pytestmark = pytest.mark.multiprocess

TINY = (
    "--config=configs/lm.py:tiny",
    "--config.trainer.steps_per_epoch=8",
    "--config.trainer.epochs=2",
    "--config.trainer.log_every=2",
    "--config.checkpoint.save_freq=4",
)
PROGRESS = re.compile(
    r"\[p0\] step +(\d+)/16 \( *\d+%\)  [\d.]+ steps/s  ETA \S+  loss [\d.]+  checkpoint \S+"
)


def test_console_of_a_short_run(tmp_path):
    r = simulate(2, 4, *TINY, f"--workdir={tmp_path}")
    assert r.returncode == 0, r.stdout[-3000:]
    lines = r.stdout.splitlines()
    assert r.stderr == ""  # Everything of the processes comes through simulate's stdout.
    assert lines[0].startswith("simulate: starting 2 processes x 4 CPU devices")
    assert lines[1] == (
        "[p0] podfit: 16 steps of configs/lm.py:tiny (trainer.steps_per_epoch=8, "
        "trainer.epochs=2, trainer.log_every=2, checkpoint.save_freq=4) on 8 cpu devices "
        f"(2 processes x 4); workdir {tmp_path}; logs {tmp_path}/logs/process_N.log"
    )
    progress = [int(m[1]) for m in map(PROGRESS.fullmatch, lines) if m]
    assert progress == list(range(2, 17, 2))
    epochs = [
        line for line in lines if re.fullmatch(r"\[p0\] epoch \d/2 done at step \d+: .*", line)
    ]
    assert len(epochs) == 2 and "val_loss" in epochs[-1]
    commits = [int(m[1]) for m in (re.fullmatch(r"\[p0\] checkpoint step (\d+) committed .*", x) for x in lines) if m]  # fmt: skip
    assert commits == [4, 8, 12, 16]
    done = re.fullmatch(r"\[p0\] done: trained 16/16 steps in \S+, goodput ([\d.]+)%", lines[-4])
    assert done and 0 < float(done[1]) < 100, lines[-4]
    assert lines[-3] == f"[p0] model: {tmp_path}/checkpoints/16 (the last committed step)"
    assert committed_steps(tmp_path)[-1] == 16
    assert lines[-2].startswith(f"[p0] load it: checkpointing.load_model('{tmp_path}/checkpoints')")
    assert lines[-1].startswith("simulate: all 2 processes exited 0 in ")
    # Nothing else: no absl INFO lines, gloo's or Orbax's routine lines, nothing of process 1.
    assert len(lines) == 1 + 1 + 8 + 2 + len(commits) + 3 + 1, r.stdout
    assert not [x for x in lines if "Gloo" in x or "OCDBT" in x or x.startswith("[p1]")]

    # All of it is in the log files, with what the console left out.
    text = [(tmp_path / "logs" / f"process_{i}.log").read_text() for i in range(2)]
    for i in range(2):
        assert f"[Gloo] Rank {i} is connected to" in text[i]  # Written there by simulate.py.
        assert f"[p{i}] " in text[i] and "joining localhost:" in text[i]  # Logged while joining.
        assert "finished at step 16" in text[i]
    assert "coordination service on loopback only" in text[0]
    assert "Skipping merge of OCDBT checkpoints" in text[0]
    assert "] podfit: 16 steps of configs/lm.py:tiny" in text[0]


FAILING_DATA = """
import jax
import numpy as np


class Records:
    def __init__(self, n, fail):
        self.n, self.fail = n, fail

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if self.fail and i > 40:
            raise RuntimeError(f"record {i} is unreadable on process {jax.process_index()}")
        rng = np.random.default_rng(i)
        x = rng.normal(size=64).astype(np.float32)  # The digits' shape: the MLP as it is.
        return x, np.int32(x[:10].argmax())


def records(validation_fraction=0.1):
    return Records(512, fail=jax.process_index() == 1), Records(64, fail=False)
"""


def test_a_failing_process_shows_its_error_and_which_process(tmp_path):
    (tmp_path / "failing_data.py").write_text(FAILING_DATA)
    r = subprocess.run(
        [
            sys.executable, "scripts/simulate.py", "--num_processes=2", "--devices_per_process=4",
            "--grace_s=5", "--",
            "--config=configs/mlp.py:tiny", f"--workdir={tmp_path / 'run'}",
            "--config.data.name=failing_data:records", "--config.trainer.steps_per_epoch=20",
        ],
        cwd=REPO,
        env={**env(), "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"},
        capture_output=True,
        text=True,
        timeout=180,
    )  # fmt: skip
    assert r.returncode == 1, r.stdout[-3000:]
    lines = r.stdout.splitlines()
    # The first to exit: process 1, or process 0 whose collective with it broke just before.
    assert re.fullmatch(r"simulate: process [01] exited 1; stopped the others", lines[-1]), r.stdout[-3000:]  # fmt: skip
    errors = [x for x in lines if x.startswith("[p1] E") and "training failed on process 1" in x]
    assert errors, r.stdout[-3000:]
    assert any(
        x.startswith("[p1] ") and "RuntimeError: record" in x and "unreadable on process 1" in x
        for x in lines
    ), r.stdout[-3000:]
