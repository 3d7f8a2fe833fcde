"""Start N real processes, one log file each; kill them all on timeout."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import portpicker

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("mp_worker.py")


def worker_command(mode: str, directory: Path, out: Path, **flags) -> list[str]:
    args = [
        sys.executable,
        str(WORKER),
        f"--mode={mode}",
        f"--directory={directory}",
        f"--out={out}",
    ]
    return args + [f"--{k}={v}" for k, v in flags.items()]


def cluster(
    mode: str, n: int, devices: int, mesh: str, directory: Path, out: Path
) -> list[list[str]]:
    """The commands of an n-process run on localhost."""
    port = portpicker.pick_unused_port()
    return [
        worker_command(
            mode,
            directory,
            out,
            process_id=i,
            num_processes=n,
            port=port,
            devices=devices,
            mesh=mesh,
        )
        for i in range(n)
    ]


def run_all(commands: list[list[str]], logs: Path, timeout_s: float) -> list[int]:
    """Runs the commands at once; returns their exit codes.

    Each process writes `logs/<i>.log`. If any is still running after
    `timeout_s`, all are killed and the test fails with the logs' tails.
    """
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "KERAS_BACKEND": "jax"}
    files = [open(logs / f"{i}.log", "w") for i in range(len(commands))]
    procs = [
        subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
        for cmd, f in zip(commands, files, strict=True)
    ]
    deadline = time.monotonic() + timeout_s
    try:
        while any(p.poll() is None for p in procs):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"processes still running after {timeout_s}s:\n" + tails(logs, len(procs))
                )
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
        for f in files:
            f.close()
    return [p.returncode for p in procs]


def tails(logs: Path, n: int, chars: int = 3000) -> str:
    return "\n".join(
        f"--- process {i} ---\n{(logs / f'{i}.log').read_text()[-chars:]}" for i in range(n)
    )
