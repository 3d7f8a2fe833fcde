"""Tests for scripts/launch_tpu_pod.py against a fake `gcloud` first on PATH.

The fake records each call's argv as one JSON line, keeps a copy of any
tarball it is asked to scp, answers `describe` with a worker address, fails
on the call numbered FAKE_GCLOUD_FAIL_ON, and exits 3 from any ssh to the
TPU named FAKE_GCLOUD_FAIL_TPU.
"""

from __future__ import annotations

import json
import os
import pathlib
import shlex
import subprocess
import sys
import tarfile
import textwrap

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
LAUNCH = REPO_ROOT / "scripts" / "launch_tpu_pod.py"
TIMEOUT_S = 60

FAKE_GCLOUD = textwrap.dedent(
    """\
    #!{python}
    import json, os, shutil, sys

    log = os.environ["FAKE_GCLOUD_LOG"]
    with open(log, "a") as f:
        f.write(json.dumps(sys.argv[1:]) + "\\n")
    with open(log) as f:
        calls = sum(1 for _ in f)
    if sys.argv[1:5] == ["compute", "tpus", "tpu-vm", "scp"]:
        shutil.copy(sys.argv[5], os.environ["FAKE_GCLOUD_TARBALL"])
    if sys.argv[1:5] == ["compute", "tpus", "tpu-vm", "describe"]:
        print("10.0.0.2")
    if sys.argv[1:5] == ["compute", "tpus", "tpu-vm", "ssh"]:
        if sys.argv[5] == os.environ.get("FAKE_GCLOUD_FAIL_TPU"):
            sys.exit(3)
    sys.exit(1 if calls == int(os.environ.get("FAKE_GCLOUD_FAIL_ON", "0")) else 0)
    """
)

SSH = ["compute", "tpus", "tpu-vm", "ssh", "my-tpu"]
SCP = ["compute", "tpus", "tpu-vm", "scp"]
LAUNCHER_FLAGS = ["--config=configs/lm.py", "--workdir=gs://bucket/a run", "--config.x=1"]


@pytest.fixture
def gcloud(tmp_path: pathlib.Path):
    """A fake gcloud on PATH; returns the environment and where it records."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "gcloud"
    fake.write_text(FAKE_GCLOUD.format(python=sys.executable))
    fake.chmod(0o755)
    env = dict(os.environ)
    env["PATH"] = str(bin_dir) + os.pathsep + env.get("PATH", "")
    env["FAKE_GCLOUD_LOG"] = str(tmp_path / "calls.jsonl")
    env["FAKE_GCLOUD_TARBALL"] = str(tmp_path / "copied.tar.gz")
    env.pop("FAKE_GCLOUD_FAIL_ON", None)
    env.pop("FAKE_GCLOUD_FAIL_TPU", None)
    return env


def _launch(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(LAUNCH), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def _calls(env: dict[str, str]) -> list[list[str]]:
    log = pathlib.Path(env["FAKE_GCLOUD_LOG"])
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def _run_command(remote_dir: str = "podfit") -> str:
    return f"cd {remote_dir} && python3 -m launcher.main {shlex.join(LAUNCHER_FLAGS)}"


def test_plain_run_is_one_ssh_on_all_workers(gcloud):
    result = _launch(gcloud, "--tpu=my-tpu", "--zone=us-central2-b", "--", *LAUNCHER_FLAGS)

    assert result.returncode == 0, result.stdout + result.stderr
    [call] = _calls(gcloud)
    assert call == [
        *SSH,
        "--zone=us-central2-b",
        "--worker=all",
        f"--command={_run_command()}",
    ]
    # The launcher flags survive the remote shell untouched, and nothing is
    # added: Cloud TPU workers find the coordinator themselves.
    remote = shlex.split(call[-1].removeprefix("--command="))
    assert remote == ["cd", "podfit", "&&", "python3", "-m", "launcher.main", *LAUNCHER_FLAGS]
    assert f"launch_tpu_pod: running: {shlex.join(['gcloud', *call])}" in result.stdout


def test_copy_install_run_in_order(gcloud):
    result = _launch(
        gcloud,
        "--tpu=my-tpu",
        "--zone=europe-west4-a",
        "--project=my-project",
        "--copy_repo",
        "--install",
        "--remote_dir=work/podfit",
        "--",
        *LAUNCHER_FLAGS,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    calls = _calls(gcloud)
    assert len(calls) == 4, calls
    scp, extract, install, run = calls
    location = ["--zone=europe-west4-a", "--project=my-project", "--worker=all"]
    assert scp[:4] == SCP
    assert scp[5:] == ["my-tpu:podfit.tar.gz", *location]
    assert extract == [
        *SSH,
        *location,
        "--command=mkdir -p work/podfit && tar -xzf podfit.tar.gz -C work/podfit",
    ]
    assert install == [
        *SSH,
        *location,
        "--command=cd work/podfit && python3 -m pip install -q -e '.[tpu]'",
    ]
    assert run == [*SSH, *location, f"--command={_run_command('work/podfit')}"]
    # The local tarball is temporary, and holds the repository's source only.
    assert not os.path.exists(scp[4])
    with tarfile.open(gcloud["FAKE_GCLOUD_TARBALL"]) as tar:
        names = tar.getnames()
    assert "scripts/launch_tpu_pod.py" in names
    assert not [n for n in names if n.startswith(".venv/") or "__pycache__" in n]


def test_dry_run_prints_commands_and_calls_nothing(gcloud):
    result = _launch(
        gcloud,
        "--tpu=my-tpu",
        "--zone=us-central2-b",
        "--project=p",
        "--copy_repo",
        "--install",
        "--dry_run",
        "--",
        *LAUNCHER_FLAGS,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert _calls(gcloud) == []
    lines = [shlex.split(line) for line in result.stdout.splitlines()]
    assert len(lines) == 4, result.stdout
    assert [line[:5] for line in lines] == [["gcloud", *SCP]] + [["gcloud", *SSH[:4]]] * 3
    location = ["--zone=us-central2-b", "--project=p", "--worker=all"]
    assert lines[-1] == ["gcloud", *SSH, *location, f"--command={_run_command()}"]


def test_dry_run_needs_no_gcloud(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path))
    result = _launch(env, "--tpu=t", "--zone=z", "--dry_run", "--", "--config=c.py")

    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1


def test_failing_step_stops_the_sequence(gcloud):
    env = dict(gcloud, FAKE_GCLOUD_FAIL_ON="2")
    result = _launch(env, "--tpu=my-tpu", "--zone=z", "--copy_repo", "--install", "--", "--x=1")

    assert result.returncode == 1
    calls = _calls(gcloud)
    assert len(calls) == 2  # scp, then the failing extract; no install, no run.
    assert calls[1][-1].startswith("--command=mkdir -p podfit")
    assert "step 2 of 4 exited 1" in result.stderr


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--zone=z"], "--tpu"),
        (["--tpu=t"], "--zone"),
        (["--tpu=t", "--zone="], "--zone"),
    ],
)
def test_missing_flag_exits_2_with_one_line(gcloud, args, flag):
    result = _launch(gcloud, *args, "--", "--config=c.py")

    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert flag in lines[0] and "Received: " in lines[0]
    assert _calls(gcloud) == []


def test_gcloud_not_on_path_exits_2_with_one_line(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path))
    result = _launch(env, "--tpu=t", "--zone=z", "--", "--config=c.py")

    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "gcloud" in lines[0]


# Multi-slice: --tpu=a,b.

MULTISLICE = ["--tpu=slice-a,slice-b", "--zone=us-central2-b"]


def _env_and_command(call: list[str]) -> tuple[dict[str, str], list[str]]:
    """The MEGASCALE_* assignments and the launcher command of a remote launch."""
    remote = shlex.split(call[-1].removeprefix("--command="))
    assert remote[:3] == ["cd", "podfit", "&&"], remote
    assignments = [word for word in remote[3:] if "=" in word and word.startswith("MEGASCALE_")]
    return dict(a.split("=", 1) for a in assignments), remote[3 + len(assignments) :]


def test_multislice_runs_one_ssh_per_slice_with_the_multislice_environment(gcloud):
    result = _launch(gcloud, *MULTISLICE, "--", *LAUNCHER_FLAGS)

    assert result.returncode == 0, result.stdout + result.stderr
    calls = _calls(gcloud)
    assert len(calls) == 3, calls
    # The coordinator is worker 0 of the first slice, asked of gcloud first.
    assert calls[0] == [
        *("compute", "tpus", "tpu-vm", "describe", "slice-a"),
        "--zone=us-central2-b",
        "--format=value(networkEndpoints[0].ipAddress)",
    ]
    launches = sorted(calls[1:], key=lambda call: call[4])  # The two run at the same time.
    assert [call[4] for call in launches] == ["slice-a", "slice-b"]
    for slice_id, call in enumerate(launches):
        assert call[5:7] == ["--zone=us-central2-b", "--worker=all"]
        env, command = _env_and_command(call)
        assert env == {
            "MEGASCALE_COORDINATOR_ADDRESS": "10.0.0.2:8080",
            "MEGASCALE_NUM_SLICES": "2",
            "MEGASCALE_SLICE_ID": str(slice_id),
            "MEGASCALE_PORT": "8080",
        }
        assert command == ["python3", "-m", "launcher.main", *LAUNCHER_FLAGS]


def test_multislice_set_up_runs_on_every_slice_before_any_launch(gcloud):
    result = _launch(
        gcloud,
        *MULTISLICE,
        "--copy_repo",
        "--install",
        "--megascale_coordinator=10.9.8.7",
        "--megascale_port=9000",
        "--",
        *LAUNCHER_FLAGS,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    calls = _calls(gcloud)
    assert len(calls) == 8, calls  # No describe: the coordinator was given.
    setup = [(call[3], call[4] if call[3] == "ssh" else call[-2]) for call in calls[:6]]
    assert [verb for verb, _ in setup] == ["scp", "ssh", "ssh"] * 2
    assert [call[4] for call in calls[1:3]] == ["slice-a"] * 2
    assert calls[0][5] == "slice-a:podfit.tar.gz" and calls[3][5] == "slice-b:podfit.tar.gz"
    assert [call[4] for call in calls[4:6]] == ["slice-b"] * 2
    envs = sorted(_env_and_command(call)[0]["MEGASCALE_SLICE_ID"] for call in calls[6:])
    assert envs == ["0", "1"]
    env, _ = _env_and_command(calls[6])
    assert env["MEGASCALE_COORDINATOR_ADDRESS"] == "10.9.8.7:9000"
    assert env["MEGASCALE_PORT"] == "9000"


def test_multislice_dry_run_calls_nothing(gcloud):
    result = _launch(gcloud, *MULTISLICE, "--dry_run", "--", *LAUNCHER_FLAGS)

    assert result.returncode == 0, result.stdout + result.stderr
    assert _calls(gcloud) == []
    lines = [shlex.split(line) for line in result.stdout.splitlines()]
    assert [line[5] for line in lines] == ["slice-a", "slice-b"]
    env, _ = _env_and_command(lines[1][1:])
    assert env["MEGASCALE_COORDINATOR_ADDRESS"] == "<worker 0 of slice-a>:8080"
    assert env["MEGASCALE_SLICE_ID"] == "1"
    assert "describe slice-a" in result.stderr


def test_a_failing_slice_gives_its_exit_code(gcloud):
    env = dict(gcloud, FAKE_GCLOUD_FAIL_TPU="slice-b")
    result = _launch(env, *MULTISLICE, "--", "--x=1")

    assert result.returncode == 3
    assert len(_calls(gcloud)) == 3  # Both slices were launched.
    assert "slice 1 exited 3" in result.stderr
    assert "slice 0 exited" not in result.stderr


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--tpu=a,,b", "--zone=z"], "Received: 'a,,b'"),
        (["--tpu=a,a", "--zone=z"], "Received: 'a,a'"),
        (["--tpu=a,b", "--zone=z", "--megascale_port=0"], "Received: 0"),
    ],
)
def test_bad_multislice_flags_exit_2_with_one_line(gcloud, args, needle):
    result = _launch(gcloud, *args, "--", "--config=c.py")

    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert needle in lines[0]
    assert _calls(gcloud) == []


def test_coordinator_lookup_failing_exits_2_with_one_line(gcloud):
    env = dict(gcloud, FAKE_GCLOUD_FAIL_ON="1")
    result = _launch(env, *MULTISLICE, "--", "--config=c.py")

    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "--megascale_coordinator" in lines[0] and "Received: exit 1" in lines[0]
    assert len(_calls(gcloud)) == 1  # Nothing launched.
