"""scripts/slurm/podfit.sbatch on a real single-node SLURM (tests/scripts/slurm_cluster.py).

A 2-task job of the tiny LM (4 CPU devices per task) joins through JAX's
SLURM detection; `scancel --signal=TERM` mid-run makes both tasks commit the
agreed step and exit 75, the script requeues the job, and the restart ends
bitwise equal to an uninterrupted run. A bad config exits 2 and the job is
not requeued.
"""

from __future__ import annotations

import re
import sys
import time

import pytest

from tests.helpers import REPO, committed_steps, finals, simulate
from tests.scripts.slurm_cluster import single_node

pytestmark = pytest.mark.multiprocess

SBATCH = REPO / "scripts" / "slurm" / "podfit.sbatch"
ARGS = (
    "--config=configs/lm.py:tiny",
    # Long enough (about 15-30 s) that the TERM lands mid-run on a loaded machine too.
    "--config.trainer.steps_per_epoch=160",
    "--config.trainer.epochs=1",
    "--config.trainer.log_every=1",
    "--config.checkpoint.save_freq=4",
    "--config.checkpoint.max_to_keep=100",  # Every committed step stays listed.
)
JOB_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with single_node(tmp_path_factory.mktemp("slurm")) as running:
        yield running


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Weights digest of an uninterrupted 2 x 4 run of ARGS through scripts/simulate.py."""
    workdir = tmp_path_factory.mktemp("reference") / "run"
    r = simulate(2, 4, *ARGS, f"--workdir={workdir}")
    assert r.returncode == 0, r.stdout[-3000:]
    (digest,) = {f["weights_sha256"] for f in finals(workdir)}
    return digest


def _submit(cluster, out, *launcher_args: str) -> int:
    """podfit.sbatch as 2 tasks on the one node; the launcher runs this test's Python."""
    return cluster.sbatch(
        "--nodes=1",
        "--ntasks=2",
        "--ntasks-per-node=2",
        "--time=30",  # The template's SIGTERM comes 300 s before the limit.
        f"--output={out}",
        f"--chdir={REPO}",
        f"--export=ALL,PODFIT_PYTHON={sys.executable}",
        str(SBATCH),
        *launcher_args,
        "--num_cpu_devices=4",
        cwd=REPO,
    )


def _wait_for(condition, what: str, cluster, out, timeout: float = JOB_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            text = out.read_text()[-4000:] if out.exists() else "(no job output)"
            raise AssertionError(f"{what} not within {timeout}s\n{text}\n{cluster.logs()}")
        time.sleep(0.1)


def test_scancel_term_commits_exits_75_requeues_and_resumes_bitwise(cluster, reference, tmp_path):
    workdir = tmp_path / "run"
    out = tmp_path / "job.out"
    job = _submit(cluster, out, *ARGS, f"--workdir={workdir}")
    try:
        _wait_for(lambda: committed_steps(workdir), "a committed step", cluster, out)
        first = committed_steps(workdir)[0]
        cluster.run("scancel", "--signal=TERM", str(job))
        _wait_for(
            lambda: "srun exited" in out.read_text(), "the first run's end", cluster, out, 120
        )
        fields = cluster.wait_for_state(job, {"COMPLETED", "FAILED"}, timeout=JOB_TIMEOUT_S)
    finally:
        cluster.run("scancel", str(job))  # No-op once the job has ended.
    text = out.read_text()
    ends = re.findall(r"podfit\.sbatch: srun exited (\d+)", text)
    assert ends == ["75", "0"], text[-4000:]  # Preempted, requeued by the script, then done.
    assert fields["JobState"] == "COMPLETED" and fields["ExitCode"] == "0:0", fields
    assert fields["Restarts"] == "1", fields
    assert "podfit.sbatch: job" in text and "restart 1:" in text, text[-4000:]

    logs = [(workdir / "logs" / f"process_{i}.log").read_text() for i in range(2)]
    stopped = {
        int(m) for log in logs for m in re.findall(r"all processes stop after step (\d+)", log)
    }
    assert len(stopped) == 1, stopped  # Both processes agreed on one step.
    (step,) = stopped
    assert first <= step < 160, (first, step)  # Signalled after the first commit, before the end.
    assert step in committed_steps(workdir), (step, committed_steps(workdir))
    done = finals(workdir)
    assert [d["start_step"] for d in done] == [step, step]  # The restart resumed there.
    assert [d["weights_sha256"] for d in done] == [reference, reference]


def test_bad_config_exits_2_and_is_not_requeued(cluster, tmp_path):
    out = tmp_path / "job.out"
    job = _submit(cluster, out, *ARGS, "--config.trainer.epochs=-1", f"--workdir={tmp_path / 'w'}")
    try:
        fields = cluster.wait_for_state(job, {"COMPLETED", "FAILED"}, timeout=JOB_TIMEOUT_S)
    finally:
        cluster.run("scancel", str(job))
    text = out.read_text()
    assert fields["JobState"] == "FAILED" and fields["ExitCode"] == "2:0", fields
    assert fields["Restarts"] == "0", fields
    assert re.findall(r"podfit\.sbatch: srun exited (\d+)", text) == ["2"], text[-3000:]
    lines = [line for line in text.splitlines() if "trainer.epochs" in line]
    assert len(lines) == 2 and "Received: trainer.epochs=-1" in lines[0], text[-3000:]
