"""Running the launcher and the simulation as real processes from tests."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The tiny LM of the kill/relaunch tests: 24 steps, a committed step every 4, all kept.
LM = (
    "--config=configs/lm.py:tiny",
    "--config.trainer.steps_per_epoch=8",
    "--config.trainer.epochs=3",
    "--config.trainer.log_every=1",
    "--config.checkpoint.save_freq=4",
    "--config.checkpoint.max_to_keep=10",
)


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "KERAS_BACKEND": "jax"}


def launcher(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m launcher.main ARGS` in one process."""
    return subprocess.run(
        [sys.executable, "-m", "launcher.main", *args],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def simulate_command(num_processes: int, devices: int, *args: str) -> list[str]:
    """The command line of scripts/simulate.py with N launcher processes."""
    return [
        sys.executable,
        "scripts/simulate.py",
        f"--num_processes={num_processes}",
        f"--devices_per_process={devices}",
        "--grace_s=5",
        "--",
        *args,
    ]


def simulate(
    num_processes: int, devices: int, *args: str, timeout: float = 300
) -> subprocess.CompletedProcess:
    """scripts/simulate.py with N launcher processes; output captured."""
    return subprocess.run(
        simulate_command(num_processes, devices, *args),
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def metrics(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def finals(workdir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(workdir.glob("final_p*.json"))]


def committed_steps(workdir: Path) -> list[int]:
    """Step directories a checkpoint listing would show (digits only: committed)."""
    root = workdir / "checkpoints"
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.exists() else []


def launcher_pids(workdir: Path) -> list[int]:
    """PIDs of launcher processes started with --workdir=WORKDIR."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"launcher.main" in cmdline and f"--workdir={workdir}".encode() in cmdline:
            pids.append(int(entry.name))
    return sorted(pids)


def start_launchers(num_processes: int, devices: int, *args: str, log_dir: Path) -> list:
    """N launcher processes joined through a local coordinator, without simulate.py.

    Nothing stops the others when one dies: what the processes do on their own.
    """
    import portpicker

    port = portpicker.pick_unused_port()
    return [
        start_one_launcher(
            i, num_processes, devices, *args, port=port, log=log_dir / f"launcher_{i}.out"
        )
        for i in range(num_processes)
    ]


@contextlib.contextmanager
def reaped(procs: list):
    """Yields `procs`; on the way out, kills (and waits for) any still running."""
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)


def launcher_logs(log_dir: Path, num_processes: int) -> list[str]:
    """What each launcher of `start_launchers(..., log_dir=log_dir)` printed."""
    return [(log_dir / f"launcher_{i}.out").read_text() for i in range(num_processes)]


def wait_for_step(workdir: Path, step: int, timeout: float = 120) -> None:
    """Waits until process 0's log reports training step `step` (log_every=1)."""
    import re
    import time

    deadline = time.monotonic() + timeout
    pattern = re.compile(r"step (\d+)/")
    log = workdir / "logs" / "process_0.log"
    while time.monotonic() < deadline:
        if log.exists():
            steps = [int(m) for m in pattern.findall(log.read_text())]
            if steps and steps[-1] >= step:
                return
        time.sleep(0.02)
    raise AssertionError(f"step {step} not reached in {timeout}s")


def start_one_launcher(
    process_id: int, num_processes: int, devices: int, *args: str, port: int, log: Path
) -> subprocess.Popen:
    """Launcher process `process_id` of `num_processes` alone (its peers are up to the test).

    stdout and stderr go to `log`.
    """
    with open(log, "w") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "launcher.main",
                *args,
                f"--num_cpu_devices={devices}",
                f"--coordinator_address=localhost:{port}",
                f"--num_processes={num_processes}",
                f"--process_id={process_id}",
            ],
            cwd=REPO,
            env=env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_for_text(path: Path, text: str, timeout: float = 60) -> None:
    """Waits until the file at `path` contains `text`."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.02)
    raise AssertionError(f"{text!r} not in {path} after {timeout}s")


def reference_sha256(workdir: Path, *args: str) -> str:
    """Weights digest of an uninterrupted 2 x 2 simulated run of `args` (the reference)."""
    r = simulate(2, 2, *args, f"--workdir={workdir}")
    assert r.returncode == 0, r.stdout[-3000:]
    return finals(workdir)[0]["weights_sha256"]


def largest_device_share(model) -> float:
    """Largest bytes of parameters + optimizer state on one device / all of them."""
    per_device = collections.Counter()
    total = 0
    for variable in [*model.weights, *model.optimizer.variables]:
        total += variable.value.nbytes
        for shard in variable.value.addressable_shards:
            per_device[shard.device] += shard.data.nbytes
    return max(per_device.values()) / total


def kill_process_1_when(
    command: Sequence[str],
    workdir,
    ready: Callable[[], bool],
    *,
    timeout: float = 120,
    poll_s: float = 0.05,
    run_env: dict | None = None,
) -> tuple[int, str]:
    """Runs `command` (a 2-process simulation of `workdir`) and SIGKILLs launcher
    process 1 as soon as `ready()` holds.

    The output goes to a file while it runs (a pipe nobody reads could fill).
    Launcher processes of `workdir` left behind (simulate.py died first) are
    killed too.

    Returns:
        (simulate.py's exit code, its output).
    """
    with tempfile.TemporaryFile() as output:
        proc = subprocess.Popen(
            list(command), cwd=REPO, env=run_env or env(), stdout=output, stderr=subprocess.STDOUT
        )
        try:
            deadline, seen = time.monotonic() + timeout, False
            while time.monotonic() < deadline and proc.poll() is None:
                if ready():
                    seen = True
                    break
                time.sleep(poll_s)
            victims = launcher_pids(workdir)
            assert seen and len(victims) == 2, "the run ended before the kill"
            os.kill(victims[1], signal.SIGKILL)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
            for pid in launcher_pids(workdir):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        output.seek(0)
        return proc.returncode, output.read().decode(errors="replace")
