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

from launcher.exits import EXIT_PREEMPTED
from tests.helpers import (
    committed_steps,
    finals,
    launcher_logs,
    reaped,
    reference_sha256,
    simulate,
    start_launchers,
    start_one_launcher,
    wait_for_step,
    wait_for_text,
)

pytestmark = pytest.mark.multiprocess

ARGS = (
    "--config=configs/lm.py:tiny",
    "--config.trainer.steps_per_epoch=60",
    "--config.trainer.epochs=1",
    "--config.checkpoint.save_freq=1000",  # Only the preemption and final saves.
)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return reference_sha256(tmp_path_factory.mktemp("reference"), *ARGS)


def _wait_for_log(workdir, text, timeout=120):
    wait_for_text(workdir / "logs" / "process_1.log", text, timeout)


# Two epochs with a validation between them: the same 60 steps as ARGS.
VALIDATION_ARGS = (
    *ARGS,
    "--config.trainer.steps_per_epoch=30",
    "--config.trainer.epochs=2",
    "--config.trainer.validation_steps=39",  # All the tiny preset's split holds.
)
# A save every 2 steps, so that a background write is often in flight; the
# saves do not change the weights, so ARGS' reference holds.
SAVING_ARGS = (*ARGS, "--config.checkpoint.save_freq=2", "--config.checkpoint.max_to_keep=2")


def _write_in_flight(workdir, timeout=120):
    """Waits until a step is being written (Orbax's temporary step directory exists)."""
    deadline = time.monotonic() + timeout
    ckpt = workdir / "checkpoints"
    while time.monotonic() < deadline:
        if ckpt.exists() and any(".orbax-checkpoint-tmp" in p.name for p in ckpt.iterdir()):
            return
        time.sleep(0.005)
    raise AssertionError(f"no save in flight within {timeout}s")


@pytest.mark.parametrize(
    "targets,when",
    [
        ("one", "compilation"),
        ("one", "mid-run"),
        ("all", "mid-run"),
        ("one", "validation"),
        ("all", "save-in-flight"),
    ],
)
def test_sigterm_saves_agreed_step_and_relaunch_loses_nothing(
    reference, tmp_path_factory, tmp_path, targets, when
):
    args = {"validation": VALIDATION_ARGS, "save-in-flight": SAVING_ARGS}.get(when, ARGS)
    expected = reference
    if when == "validation":  # Other epochs: its own uninterrupted run.
        expected = reference_sha256(tmp_path_factory.mktemp("reference_validation"), *args)
    workdir = tmp_path / "run"
    procs = start_launchers(
        2, 2, *args, "--config.trainer.log_every=1", f"--workdir={workdir}", log_dir=tmp_path
    )
    with reaped(procs):
        if when == "compilation":
            # Every process has joined (the topology line), before the first step.
            _wait_for_log(workdir, "cpu devices")
        elif when == "validation":
            _wait_for_log(workdir, "validation begins after step 30")
        elif when == "save-in-flight":
            wait_for_step(workdir, 10)
            _write_in_flight(workdir)
        else:
            wait_for_step(workdir, 10)
        for p in procs if targets == "all" else procs[1:]:
            os.kill(p.pid, signal.SIGTERM)
        codes = [p.wait(timeout=120) for p in procs]
    logs = launcher_logs(tmp_path, 2)
    assert codes == [EXIT_PREEMPTED, EXIT_PREEMPTED], [log[-2000:] for log in logs]
    stopped = {
        int(m) for log in logs for m in re.findall(r"all processes stop after step (\d+)", log)
    }
    assert len(stopped) == 1, stopped
    (step,) = stopped
    assert committed_steps(workdir)[-1] == step

    if when == "validation":
        assert step > 30, step  # Acted on in the second epoch, after the validation.

    r = simulate(2, 2, *args, f"--workdir={workdir}")
    assert r.returncode == 0, r.stdout[-3000:]
    done = finals(workdir)
    assert done[0]["start_step"] == step  # Zero steps lost.
    assert [d["weights_sha256"] for d in done] == [expected, expected]


@pytest.mark.parametrize("process_id", [0, 1], ids=["coordinator", "peer"])
def test_sigterm_while_joining_exits_75_at_once(tmp_path, process_id):
    """One process of two, alone: it blocks in jax.distributed.initialize for its peer.

    Nothing has trained, so exiting 75 at once loses nothing; before, the
    SIGTERM killed the process (-15) and its peers waited --init_timeout_s.
    """
    import portpicker

    log = tmp_path / "launcher.out"
    workdir = tmp_path / "run"
    proc = start_one_launcher(
        process_id,
        2,
        1,
        *ARGS,
        f"--workdir={workdir}",
        "--verbosity=1",  # JAX's INFO lines on the console too.
        port=portpicker.pick_unused_port(),
        log=log,
    )
    try:
        # Logged by JAX just before the client's blocking connect.
        wait_for_text(log, "Connecting to JAX distributed service")
        time.sleep(1.0)  # Inside connect (C++), waiting for the missing peer.
        assert proc.poll() is None, log.read_text()[-2000:]
        sent = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=30)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    out = log.read_text()
    assert code == EXIT_PREEMPTED, out[-2000:]
    assert took < 5, took
    lines = [line for line in out.splitlines() if "while joining" in line]
    assert len(lines) == 1 and f"exiting {EXIT_PREEMPTED}" in lines[0], out[-2000:]
    assert "Traceback" not in out
    assert not committed_steps(workdir)
