"""The goodput report of a real run killed with -9 and relaunched (2 processes x 4 CPU devices).

The expected numbers come from the run's files, not from the report's code:
the step of the kill from the first launch's metrics.jsonl, the step it
resumed from from the committed step directories, the wall time from the
first and last lines of process 0's event files.
"""

import json
import subprocess
import sys

import pytest

from launcher import report
from tests.helpers import (
    LM,
    REPO,
    committed_steps,
    env,
    finals,
    kill_process_1_when,
    simulate,
    simulate_command,
)

pytestmark = pytest.mark.multiprocess


def _trained_steps(workdir) -> list[int]:
    """The steps of metrics.jsonl's step lines (a line being written is skipped)."""
    path = workdir / "metrics.jsonl"
    steps = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "epoch" not in record:
            steps.append(record["step"])
    return steps


def _event_lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_report_of_a_run_killed_with_sigkill_and_relaunched(tmp_path):
    workdir = tmp_path / "run"

    # Kill process 1 a step after a save point, once a step is committed:
    # the steps since that commit are computed again by the relaunch.
    def ready() -> bool:
        steps = _trained_steps(workdir)
        return bool(committed_steps(workdir) and steps) and steps[-1] >= 9 and steps[-1] % 4 == 1

    code, out = kill_process_1_when(
        simulate_command(2, 4, *LM, f"--workdir={workdir}"), workdir, ready, poll_s=0.01
    )
    assert code != 0, out[-2000:]
    assert not finals(workdir), "the killed run must not have finished"
    # Process 1 died: process 0 could not run another step (every step is a
    # collective of both), so its last metrics line is the step of the kill.
    killed_at = max(_trained_steps(workdir))
    resumed_from = max(committed_steps(workdir))
    expected_wasted = killed_at - resumed_from

    r = simulate(2, 4, *LM, f"--workdir={workdir}")
    assert r.returncode == 0, r.stdout[-3000:]
    assert f"resumed from step {resumed_from}" in r.stdout

    summary = report.summarize(workdir)
    assert len(summary.launches) == 2
    first, second = summary.launches
    assert (first.last_step, first.kept_step) == (killed_at, resumed_from)
    assert first.code != 0
    assert first.wasted_steps == summary.wasted_steps == expected_wasted
    assert (second.restored, second.last_step, second.code) == (resumed_from, 24, 0)
    assert summary.counted_steps == 24

    # The wall time: process 0's first event of launch 1 to its last of launch 2.
    files = sorted((workdir / "events").glob("*/process_0.jsonl"))
    assert len(files) == 2 and len(list((workdir / "events").glob("*/process_1.jsonl"))) == 2
    wall = _event_lines(files[-1])[-1]["time"] - _event_lines(files[0])[0]["time"]
    assert summary.total_s == pytest.approx(wall, rel=1e-6)
    assert sum(summary.seconds.values()) == pytest.approx(wall, rel=0.02)
    assert all(v >= 0 for v in summary.seconds.values()), summary.seconds
    for category in ("goodput", "compilation", "checkpoint restore", "between launches"):
        assert summary.seconds[category] > 0, (category, summary.seconds)
    if expected_wasted:
        assert summary.seconds["wasted progress"] > 0
    # Each launch's step events carry its wait for batches so far: it only grows.
    for path in files:
        waits = [e["data_wait_s"] for e in _event_lines(path) if e["kind"] in ("compiled", "step")]
        assert waits and waits[0] >= 0 and waits == sorted(waits), waits

    cli = subprocess.run(
        [sys.executable, "-m", "launcher.report", str(workdir)],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 0, cli.stderr
    assert f"{expected_wasted} computed again after a disruption" in cli.stdout
    assert (workdir / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
