"""A gs:// workdir through the launcher, against a real GCS server (an emulator on loopback).

One scenario, several assertions: an uninterrupted local run (the reference);
the same config on gs:// with 2 processes x 4 devices, one process killed
with SIGKILL after a committed step, relaunched to the end; then one more
epoch resumed from gs:// onto 1 process x 8 devices. Per-process logs stay
local (--logdir).
"""

import json
import subprocess
import sys

import pytest
from etils import epath

from launcher import report
from tests.gcs_emulator import BUCKET, gcs  # noqa: F401  (the fixture)
from tests.helpers import (
    LM,
    REPO,
    env,
    finals,
    kill_process_1_when,
    simulate,
    simulate_command,
)

pytestmark = pytest.mark.multiprocess

WORKDIR = f"gs://{BUCKET}/run"
CHECKPOINTS = f"{WORKDIR}/checkpoints"


def _committed() -> list[int]:
    from checkpointing import layout  # noqa: PLC0415  (imports Orbax)

    return [m.step for m in layout.committed_steps(CHECKPOINTS)]


def _gs_finals() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(epath.Path(WORKDIR).glob("final_p*.json"))]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "checkpointing", *args],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def scenario(gcs, tmp_path_factory):  # noqa: F811
    """Runs everything once; returns what the tests look at."""
    out: dict = {}
    local = tmp_path_factory.mktemp("local")
    r = simulate(2, 4, *LM, f"--workdir={local}")
    assert r.returncode == 0, r.stdout[-3000:]
    out["local_sha256"] = finals(local)[0]["weights_sha256"]

    logs = tmp_path_factory.mktemp("logs")
    gs_args = (*LM, f"--workdir={WORKDIR}")
    out["killed_rc"], out["killed_output"] = kill_process_1_when(
        simulate_command(2, 4, *gs_args, f"--logdir={logs / 'killed'}"),
        WORKDIR,
        _committed,
        timeout=180,
        poll_s=0.1,
    )
    out["finals_after_kill"] = _gs_finals()
    out["committed_after_kill"] = _committed()

    out["relaunch"] = simulate(2, 4, *gs_args, f"--logdir={logs / 'relaunch'}")
    out["finals"] = _gs_finals()
    out["list"] = _cli("list", CHECKPOINTS)
    out["verify"] = _cli("verify", CHECKPOINTS)
    out["committed"] = _committed()

    # One more epoch on another topology: 1 process x 8 devices, data-only mesh.
    out["moved"] = simulate(
        1,
        8,
        *gs_args,
        "--config.trainer.epochs=4",
        "--config.mesh.shape=(8,1)",
        "--config.trainer.profile_steps=(26,27)",
        f"--logdir={logs / 'moved'}",
    )
    out["moved_p0"] = json.loads(epath.Path(f"{WORKDIR}/final_p0.json").read_text())
    out["logs"] = logs
    return out


def test_kill_9_on_gs_then_relaunch_is_bitwise_equal_to_a_local_run(scenario):
    assert scenario["killed_rc"] != 0, scenario["killed_output"][-2000:]
    assert scenario["finals_after_kill"] == [], "the killed run must not have finished"
    committed = scenario["committed_after_kill"]
    assert committed and max(committed) < 24

    r = scenario["relaunch"]
    assert r.returncode == 0, r.stdout[-3000:]
    assert f"resumed from step {max(committed)}" in r.stdout
    done = scenario["finals"]
    assert [(d["start_step"], d["final_step"]) for d in done] == [(max(committed), 24)] * 2
    expected = scenario["local_sha256"]
    assert [d["weights_sha256"] for d in done] == [expected, expected]


def test_checkpointing_list_and_verify_read_gs(scenario):
    committed = scenario["committed"]
    assert committed[-1] == 24 and len(committed) >= 2
    listing, verify = scenario["list"], scenario["verify"]
    assert listing.returncode == 0, listing.stderr[-2000:]
    listed = [
        int(line.split()[0]) for line in listing.stdout.splitlines() if line.strip()[:1].isdigit()
    ]
    assert listed == committed
    assert verify.returncode == 0, verify.stdout + verify.stderr[-2000:]
    verified = {int(line.split()[0]): line for line in verify.stdout.splitlines() if line.strip()}
    assert sorted(verified) == committed
    # The killed run's last step may have been committed without its
    # manifest (the kill came first): unverified, not damaged.
    resumed_at = max(scenario["committed_after_kill"])
    for step, line in verified.items():
        assert " ok (" in line or (step <= resumed_at and " unverified" in line), verify.stdout


def test_resume_from_gs_onto_another_topology(scenario):
    r = scenario["moved"]
    assert r.returncode == 0, r.stdout[-3000:]
    assert "resumed from step 24" in r.stdout
    done = scenario["moved_p0"]  # final_p1.json is the relaunch's, left as it was.
    assert (done["start_step"], done["final_step"]) == (24, 32)


def test_metrics_and_config_are_objects_and_logs_stay_local(scenario):
    assert scenario["moved"].returncode == 0
    lines = epath.Path(f"{WORKDIR}/metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    steps = {m["step"] for m in records if "epoch" not in m}
    # The relaunch's lines and the move's; of the killed run's, those it
    # flushed before the kill (a rewrite each 30 s or epoch end).
    resumed_at = max(scenario["committed_after_kill"])
    assert set(range(resumed_at + 1, 33)) <= steps <= set(range(1, 33))
    assert [m["epoch"] for m in records if "epoch" in m][-1] == 4
    assert json.loads(epath.Path(f"{WORKDIR}/config.json").read_text())["trainer"]["epochs"] == 4
    assert not (REPO / "gs:").exists()  # Not a local folder named after the URL.
    logs = scenario["logs"]
    for run, processes in (("killed", 2), ("relaunch", 2), ("moved", 1)):
        for i in range(processes):
            text = (logs / run / f"process_{i}.log").read_text()
            assert f"[p{i}]" in text
            assert "AdaptiveReadaheadCache" not in text  # fsspec's INFO line per object read.


def test_tensorboard_event_files_and_the_profile_are_objects(scenario, tmp_path):
    assert scenario["moved"].returncode == 0
    from tests.trainer.test_tensorboard import scalars  # noqa: PLC0415

    files = list(epath.Path(f"{WORKDIR}/tensorboard/train").iterdir())
    assert len(files) >= 2  # The relaunch's and the move's, at least.
    for f in files:
        (tmp_path / f.name).write_bytes(f.read_bytes())
    steps = {step for step, _ in scalars(tmp_path)["batch_loss"]}
    resumed_at = max(scenario["committed_after_kill"])
    assert set(range(resumed_at + 1, 33)) <= steps <= set(range(1, 33))
    (trace,) = epath.Path(f"{WORKDIR}/profile/process_0/plugins/profile").iterdir()
    names = sorted(p.name for p in trace.iterdir())
    assert "perfetto_trace.json.gz" in names and any(n.endswith(".xplane.pb") for n in names)


def test_goodput_report_reads_the_events_on_gs(scenario):
    assert scenario["moved"].returncode == 0
    # The killed launch's process 0 may have died before its first rewrite
    # (every 30 s on gs://); the relaunch and the move ended and flushed.
    summary = report.summarize(WORKDIR)
    assert 2 <= len(summary.launches) <= 3
    relaunch, moved = summary.launches[-2:]
    assert (relaunch.code, relaunch.last_step) == (0, 24)
    assert (moved.code, moved.restored, moved.last_step) == (0, 24, 32)
    assert sum(summary.seconds.values()) == pytest.approx(summary.total_s, rel=0.02)
