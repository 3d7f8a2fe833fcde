"""Real launcher processes: train, loss goes down, all processes agree."""

import pytest

from tests.helpers import finals, launcher, metrics, simulate


@pytest.mark.multiprocess
def test_lm_2_processes_x_4_devices_tensor_parallel(tmp_path):
    r = simulate(
        2,
        4,
        "--config=configs/lm.py:tiny",
        f"--workdir={tmp_path}",
        "--config.trainer.steps_per_epoch=12",
        "--config.trainer.log_every=3",
    )
    assert r.returncode == 0, r.stdout[-3000:]
    assert "on 8 cpu devices (2 processes x 4)" in r.stdout.splitlines()[1]
    assert (
        "process 0/2: 4 local of 8 cpu devices" in (tmp_path / "logs" / "process_0.log").read_text()
    )
    losses = [m["loss"] for m in metrics(tmp_path) if "epoch" not in m]
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    done = finals(tmp_path)
    assert len(done) == 2 and done[0]["final_step"] == 12
    assert done[0]["weights_sha256"] == done[1]["weights_sha256"]
    assert (tmp_path / "config.json").exists()
    assert (tmp_path / "logs" / "process_1.log").read_text().count("[p1]") > 2


def test_one_process_mlp(tmp_path):
    r = launcher("--config=configs/mlp.py:tiny", f"--workdir={tmp_path}", "--num_cpu_devices=2")
    assert r.returncode == 0, r.stderr[-3000:]
    epoch = [m for m in metrics(tmp_path) if "epoch" in m]
    assert epoch and 0 <= epoch[-1]["val_accuracy"] <= 1


@pytest.mark.multiprocess
def test_long_validation_with_several_devices_per_process_finishes(tmp_path):
    """2 processes x 2 devices, 39 validation steps: hung before SyncEvalSteps (5 of 5 runs)."""
    r = simulate(
        2,
        2,
        "--config=configs/lm.py:tiny",
        "--config.trainer.steps_per_epoch=4",
        "--config.trainer.epochs=2",
        "--config.trainer.validation_steps=39",
        f"--workdir={tmp_path}",
        timeout=120,
    )
    assert r.returncode == 0, r.stdout[-3000:]
    done = finals(tmp_path)
    assert len({d["weights_sha256"] for d in done}) == 1
