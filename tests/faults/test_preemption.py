"""SIGTERM (a TPU maintenance event, a scheduler's eviction) to one or all processes.

The processes agree on one step, commit a checkpoint there, exit with the
documented code 75; the relaunch resumes from that very step (zero steps
lost) and ends bitwise equal to an uninterrupted run.
"""

import os
import re
import signal
import time

import pytest

from tests.helpers import committed_steps, finals, simulate, start_launchers, wait_for_step
from trainer.preemption import EXIT_PREEMPTED

pytestmark = pytest.mark.multiprocess

ARGS = (
    "--config=configs/lm.py:tiny",
    "--config.trainer.steps_per_epoch=60",
    "--config.trainer.epochs=1",
    "--config.checkpoint.save_freq=1000",  # Only the preemption and final saves.
)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reference")
    r = simulate(2, 2, *ARGS, f"--workdir={workdir}")
    assert r.returncode == 0, r.stdout[-3000:]
    return finals(workdir)[0]["weights_sha256"]


def _wait_for_log(workdir, text, timeout=120):
    deadline = time.monotonic() + timeout
    log = workdir / "logs" / "process_1.log"
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_text():
            return
        time.sleep(0.02)
    raise AssertionError(f"{text!r} not logged in {timeout}s")


@pytest.mark.parametrize(
    "targets,when",
    [("one", "compilation"), ("one", "mid-run"), ("all", "mid-run")],
)
def test_sigterm_saves_agreed_step_and_relaunch_loses_nothing(reference, tmp_path, targets, when):
    workdir = tmp_path / "run"
    procs = start_launchers(
        2, 2, *ARGS, "--config.trainer.log_every=1", f"--workdir={workdir}", log_dir=tmp_path
    )
    try:
        if when == "compilation":
            # Every process has joined (the topology line), before the first step.
            _wait_for_log(workdir, "cpu devices")
        else:
            wait_for_step(workdir, 10)
        for p in procs if targets == "all" else procs[1:]:
            os.kill(p.pid, signal.SIGTERM)
        codes = [p.wait(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    logs = [(tmp_path / f"launcher_{i}.out").read_text() for i in range(2)]
    assert codes == [EXIT_PREEMPTED, EXIT_PREEMPTED], [log[-2000:] for log in logs]
    stopped = {
        int(m) for log in logs for m in re.findall(r"all processes stop after step (\d+)", log)
    }
    assert len(stopped) == 1, stopped
    (step,) = stopped
    assert committed_steps(workdir)[-1] == step

    r = simulate(2, 2, *ARGS, f"--workdir={workdir}")
    assert r.returncode == 0, r.stdout[-3000:]
    done = finals(workdir)
    assert done[0]["start_step"] == step  # Zero steps lost.
    assert [d["weights_sha256"] for d in done] == [reference, reference]
