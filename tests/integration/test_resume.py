"""Exact resume through the launcher, with real processes.

- kill -9 of one process mid-run, relaunch: final weights bitwise equal to an
  uninterrupted run's (CPU, same topology);
- a checkpoint written under one topology continues under others, and the
  global batches continue unchanged: the losses and final weights match the
  uninterrupted run's up to float reduction order.
"""

from pathlib import Path

import numpy as np
import pytest

from tests.helpers import (
    LM,
    committed_steps,
    finals,
    kill_process_1_when,
    metrics,
    simulate,
    simulate_command,
)

pytestmark = pytest.mark.multiprocess


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    r = simulate(2, 4, *LM, f"--workdir={workdir}")
    assert r.returncode == 0, r.stdout[-3000:]
    return workdir


def test_kill_9_mid_run_then_relaunch_is_bitwise_equal(uninterrupted, tmp_path):
    workdir = tmp_path / "killed"
    cmd = simulate_command(
        2,
        4,
        *LM,
        f"--workdir={workdir}",
        # Slow steps down a little so the kill lands mid-run, after a commit.
        "--config.trainer.log_every=1",
    )
    code, out = kill_process_1_when(
        cmd, workdir, lambda: any(s >= 8 for s in committed_steps(workdir))
    )
    assert code != 0, out[-2000:]
    assert not finals(workdir), "the killed run must not have finished"
    committed = committed_steps(workdir)
    assert committed and max(committed) < 24

    r = simulate(2, 4, *LM, f"--workdir={workdir}")
    assert r.returncode == 0, r.stdout[-3000:]
    assert "resumed from step" in r.stdout
    done = finals(workdir)
    assert done[0]["start_step"] == max(committed) and done[0]["final_step"] == 24
    expected = finals(uninterrupted)[0]["weights_sha256"]
    assert [d["weights_sha256"] for d in done] == [expected, expected]


def _loss_by_step(workdir: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in metrics(workdir) if "epoch" not in m}


@pytest.mark.parametrize(
    "processes,devices,mesh",
    [(1, 2, "(1,2)"), (4, 1, "(2,2)"), (1, 8, "(8,1)")],
    ids=["1x2-mesh(1,2)", "4x1-mesh(2,2)", "1x8-mesh(8,1)-data-only"],
)
def test_restore_onto_another_topology_and_back(uninterrupted, tmp_path, processes, devices, mesh):
    # First 8 steps (one epoch) under 2 processes x 4 devices, mesh (4,2).
    workdir = tmp_path / "moved"
    r = simulate(2, 4, *LM, f"--workdir={workdir}", "--config.trainer.epochs=1")
    assert r.returncode == 0, r.stdout[-3000:]
    assert committed_steps(workdir)[-1] == 8
    # Epoch 2 under the new topology, resumed from step 8.
    r = simulate(
        processes,
        devices,
        *LM,
        f"--workdir={workdir}",
        f"--config.mesh.shape={mesh}",
        "--config.trainer.epochs=2",
    )
    assert r.returncode == 0, r.stdout[-3000:]
    assert "resumed from step 8" in r.stdout
    # And back to 2 x 4 for epoch 3.
    r = simulate(2, 4, *LM, f"--workdir={workdir}")
    assert r.returncode == 0, r.stdout[-3000:]
    assert "resumed from step 16" in r.stdout

    expected, got = _loss_by_step(uninterrupted), _loss_by_step(workdir)
    assert sorted(got) == sorted(expected) == list(range(1, 25))
    # Same batches in the same order: losses agree to float reduction order.
    np.testing.assert_allclose(
        [got[s] for s in range(1, 25)], [expected[s] for s in range(1, 25)], rtol=2e-3
    )
