"""Running the launcher and the simulation as real processes from tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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


def simulate(
    num_processes: int, devices: int, *args: str, timeout: float = 300
) -> subprocess.CompletedProcess:
    """scripts/simulate.py with N launcher processes; output captured."""
    return subprocess.run(
        [
            sys.executable,
            "scripts/simulate.py",
            f"--num_processes={num_processes}",
            f"--devices_per_process={devices}",
            "--grace_s=5",
            "--",
            *args,
        ],
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
