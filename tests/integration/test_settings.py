"""A run with the training settings users expect, on token files the test writes.

mixed_bfloat16, a cosine schedule with warmup, gradient accumulation 4 and 2
steps per execution: the loss falls, and the learning rate in the metrics
follows the schedule by optimizer step (not by batch).
"""

import subprocess
import sys

import pytest

from tests.helpers import REPO, env, finals, launcher, metrics
from trainer import optim

CONFIG = """
import ml_collections

from configs import lm


def get_config():
    config = lm.get_config("tiny")
    config.data.name = "tokens"
    config.data.kwargs = ml_collections.ConfigDict(
        {{"train": "{root}/train.bin", "validation": "{root}/val.bin", "seq_len": 32}}
    )
    config.model.kwargs.seq_len = config.data.kwargs.get_ref("seq_len")
    config.trainer.dtype_policy = "mixed_bfloat16"
    config.trainer.steps_per_execution = 2
    config.trainer.epochs = 2
    config.trainer.steps_per_epoch = 16
    config.trainer.log_every = 2
    config.optimizer.learning_rate = 1e-2
    config.optimizer.schedule = "cosine"
    config.optimizer.warmup_steps = 2
    config.optimizer.decay_steps = 6
    config.optimizer.alpha = 0.1
    config.optimizer.gradient_accumulation_steps = 4
    config.checkpoint.save_freq = 8
    return config
"""


def _tokenize(pattern, out):
    r = subprocess.run(
        [sys.executable, "scripts/tokenize_text.py", f"--input={pattern}", f"--output={out}"],
        cwd=REPO, env=env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr


def test_mixed_precision_cosine_warmup_and_accumulation(tmp_path):
    _tokenize(f"{REPO}/trainer/*.py", tmp_path / "train.bin")
    _tokenize(f"{REPO}/configs/*.py", tmp_path / "val.bin")
    (tmp_path / "settings.py").write_text(CONFIG.format(root=tmp_path))
    workdir = tmp_path / "run"
    r = launcher(f"--config={tmp_path}/settings.py", f"--workdir={workdir}", "--num_cpu_devices=2")
    assert r.returncode == 0, r.stderr[-3000:]

    records = metrics(workdir)
    epochs = [m for m in records if "epoch" in m]
    assert len(epochs) == 2 and epochs[1]["loss"] < epochs[0]["loss"], epochs
    steps = [m for m in records if "epoch" not in m]
    assert len(steps) == 16  # every 2 batches of 32
    rate = optim.Schedule(
        1e-2, kind="cosine", warmup_steps=2, decay_steps=6, alpha=0.1, accumulation_steps=4
    )
    for i, record in enumerate(steps):
        batches = 2 * (i + 1)
        assert record["step"] == batches // 4  # optimizer steps
        assert record["learning_rate"] == pytest.approx(rate.at((batches - 1) // 4))
    seen = [m["learning_rate"] for m in steps]
    assert seen[0] < max(seen) and seen[-1] < max(seen)  # warmup up, cosine down
    assert finals(workdir)[0]["final_step"] == 8

    # One epoch, then a relaunch for the second: continues at batch 16 (update
    # 4) and ends bitwise equal, the same rates logged.
    resumed = tmp_path / "resumed"
    common = (f"--config={tmp_path}/settings.py", f"--workdir={resumed}", "--num_cpu_devices=2")
    r = launcher(*common, "--config.trainer.epochs=1")
    assert r.returncode == 0, r.stderr[-3000:]
    r = launcher(*common)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from step 16" in r.stderr
    assert finals(resumed)[0]["weights_sha256"] == finals(workdir)[0]["weights_sha256"]
    again = [m for m in metrics(resumed) if "epoch" not in m]
    assert [m["learning_rate"] for m in again] == seen
