"""kill -9 of any process at seeded random moments.

Without simulate.py's help, the survivors must notice and exit non-zero within
a bounded time (never hang); relaunching the same command resumes from the
last committed step and ends bitwise equal to an uninterrupted run.
"""

import os
import random
import signal
import time

import pytest

from tests.helpers import (
    committed_steps,
    finals,
    launcher_logs,
    reaped,
    reference_sha256,
    simulate,
    start_launchers,
    wait_for_step,
)

pytestmark = pytest.mark.multiprocess

ARGS = (
    "--config=configs/lm.py:tiny",
    "--config.trainer.steps_per_epoch=10",
    "--config.trainer.epochs=2",
    "--config.checkpoint.save_freq=3",
    "--config.checkpoint.max_to_keep=2",
    "--config.trainer.log_every=1",
    "--heartbeat_timeout_s=20",
    "--init_timeout_s=20",  # A kill during start-up: the survivor stops waiting to join.
)
# The bound the issue asks for (60 s by default), with the heartbeat set lower.
EXIT_BOUND_S = 60


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return reference_sha256(tmp_path_factory.mktemp("reference"), *ARGS)


@pytest.mark.parametrize("seed", [0, 1, 2, 4, 15, 25])
def test_random_kill_then_relaunch(reference, tmp_path, seed):
    rng = random.Random(seed)
    victim = rng.randrange(2)
    # Step 0: during start-up or compilation; else just after that step, which
    # with saves every 3 steps is often while a background write is running.
    kill_step = rng.choice([0, *range(1, 20)])
    delay = rng.uniform(0.5, 3.0) if kill_step == 0 else rng.uniform(0.0, 0.2)
    workdir = tmp_path / "run"
    procs = start_launchers(2, 2, *ARGS, f"--workdir={workdir}", log_dir=tmp_path)
    with reaped(procs):
        if kill_step:
            wait_for_step(workdir, kill_step)
        time.sleep(delay)
        killed = procs[victim].poll() is None
        if killed:
            os.kill(procs[victim].pid, signal.SIGKILL)
        t0 = time.monotonic()
        for p in procs:
            p.wait(timeout=EXIT_BOUND_S + 30)
        waited = time.monotonic() - t0
    logs = {i: log[-2000:] for i, log in enumerate(launcher_logs(tmp_path, 2))}
    if killed:
        survivor = procs[1 - victim]
        assert survivor.returncode != 0, logs
        assert waited < EXIT_BOUND_S, (waited, logs)
    print(
        f"seed={seed} victim={victim} delay={delay:.1f}s killed={killed} "
        f"committed={committed_steps(workdir)} survivor_exit_s={waited:.1f}"
    )

    r = simulate(2, 2, *ARGS, f"--workdir={workdir}")
    assert r.returncode == 0, r.stdout[-3000:]
    assert [d["weights_sha256"] for d in finals(workdir)] == [reference, reference]
