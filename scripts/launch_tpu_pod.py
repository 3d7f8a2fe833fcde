"""Runs the launcher on every host of a Cloud TPU pod slice through gcloud.

Usage:
  python scripts/launch_tpu_pod.py --tpu=my-v4-32 --zone=us-central2-b \\
      [--project=my-project] [--copy_repo] [--install] [--remote_dir=podfit] \\
      [--dry_run] -- --config=configs/lm.py --workdir=gs://my-bucket/runs/lm

Multi-slice (several TPU VMs of the same type, joined over the data-center
network): name them all, `--tpu=slice-a,slice-b`, and give the config a
`mesh.dcn_shape` whose product is the number of slices. Each step then runs
once per slice; the launch runs one ssh per slice at the same time, each with
the multislice environment: MEGASCALE_COORDINATOR_ADDRESS (worker 0 of the
first slice, from `gcloud compute tpus tpu-vm describe`, or
--megascale_coordinator), MEGASCALE_NUM_SLICES, MEGASCALE_SLICE_ID and
MEGASCALE_PORT (--megascale_port). JAX derives the global process ids from
them.

Steps, in order, each on all workers (`--worker=all`):
  --copy_repo  pack this checkout's tracked files (`git ls-files`) into a
               tarball, `gcloud compute tpus tpu-vm scp` it to every worker and
               unpack it into --remote_dir.
  --install    `python3 -m pip install -q -e '.[tpu]'` in --remote_dir.
  (always)     `cd REMOTE_DIR && python3 -m launcher.main LAUNCHER_FLAGS`.

Everything after `--` is passed to the launcher untouched. No
--coordinator_address/--num_processes/--process_id are added: on Cloud TPU,
jax.distributed.initialize() detects them itself. The first step that exits
non-zero stops the sequence, and its exit code becomes ours. --dry_run prints
the commands, one per line, and runs nothing. With several slices, the
launch's exit code is the first failing slice's (in --tpu order).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence

import launch_flags  # scripts/, beside this file
from absl import app, flags

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What --copy_repo packs when this is not a git checkout (or nothing is tracked).
_FALLBACK_PATHS = (
    "launcher",
    "configs",
    "trainer",
    "checkpointing",
    "scripts",
    "pyproject.toml",
    "README.md",
    "Makefile",
)
_SKIPPED_DIRS = ("__pycache__", ".pytest_cache", ".ruff_cache")
# The tarball's name in each worker's home directory.
_REMOTE_TARBALL = "podfit.tar.gz"
# Shown instead of the local tarball's path in --dry_run, where none is made.
_DRY_RUN_TARBALL = "<local tarball>"

_TPU = flags.DEFINE_string(
    "tpu", None, "Name of the Cloud TPU VM (pod slice); several, comma-separated, for multi-slice."
)
_ZONE = flags.DEFINE_string("zone", None, "Zone of the TPU, e.g. us-central2-b.")
_PROJECT = flags.DEFINE_string("project", None, "Google Cloud project; gcloud's default if unset.")
_COPY_REPO = flags.DEFINE_bool(
    "copy_repo", False, "Copy this checkout's tracked files to --remote_dir on every worker."
)
_INSTALL = flags.DEFINE_bool(
    "install", False, "pip install -e '.[tpu]' in --remote_dir on every worker."
)
_REMOTE_DIR = flags.DEFINE_string(
    "remote_dir", "podfit", "Repository directory on the workers, relative to the home directory."
)
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the gcloud commands; run nothing.")
_MEGASCALE_COORDINATOR = flags.DEFINE_string(
    "megascale_coordinator",
    None,
    "Multi-slice: address of worker 0 of the first slice (default: asked of gcloud).",
)
_MEGASCALE_PORT = flags.DEFINE_integer(
    "megascale_port", 8080, "Multi-slice: the port the slices' runtimes talk on."
)
# Shown in --dry_run instead of the address `describe` would give.
_DRY_RUN_COORDINATOR = "<worker 0 of {tpu}>"


def _usage_error(message: str) -> None:
    launch_flags.usage_error("launch_tpu_pod", message)


_parse_flags = launch_flags.parser("launch_tpu_pod", "launch_tpu_pod.py --tpu=T --zone=Z --")


def _tpus() -> list[str]:
    return [name.strip() for name in (_TPU.value or "").split(",")]


def _validate() -> None:
    tpus = _tpus()
    if not all(tpus) or len(set(tpus)) != len(tpus):
        _usage_error(
            f"--tpu must name the Cloud TPU VM, or distinct VMs (slices) separated by commas. "
            f"Received: {_TPU.value!r}"
        )
    if not 0 < _MEGASCALE_PORT.value < 65536:
        _usage_error(f"--megascale_port must be a port number. Received: {_MEGASCALE_PORT.value}")
    if _MEGASCALE_COORDINATOR.value == "":
        _usage_error("--megascale_coordinator must be a host, or left unset. Received: ''")
    if not _ZONE.value:
        _usage_error(
            f"--zone must name the TPU's zone, e.g. us-central2-b. Received: {_ZONE.value!r}"
        )
    if _PROJECT.value == "":
        _usage_error("--project must be a project id, or left unset. Received: ''")
    if not _REMOTE_DIR.value:
        _usage_error(f"--remote_dir must not be empty. Received: {_REMOTE_DIR.value!r}")
    if not _DRY_RUN.value and shutil.which("gcloud") is None:
        _usage_error(
            "gcloud was not found on PATH; install the Google Cloud CLI "
            "(https://cloud.google.com/sdk/docs/install) or pass --dry_run."
        )


class _Gcloud:
    """Builds `gcloud compute tpus tpu-vm` commands for one TPU."""

    def __init__(self, tpu: str, zone: str, project: str | None):
        self._tpu = tpu
        self._location = [f"--zone={zone}"] + ([f"--project={project}"] if project else [])

    def ssh(self, command: str) -> list[str]:
        return [
            *("gcloud", "compute", "tpus", "tpu-vm", "ssh", self._tpu),
            *self._location,
            "--worker=all",
            f"--command={command}",
        ]

    def describe_worker0_ip(self) -> list[str]:
        return [
            *("gcloud", "compute", "tpus", "tpu-vm", "describe", self._tpu),
            *self._location,
            "--format=value(networkEndpoints[0].ipAddress)",
        ]

    def scp(self, local_path: str, remote_path: str) -> list[str]:
        return [
            *("gcloud", "compute", "tpus", "tpu-vm", "scp", local_path),
            f"{self._tpu}:{remote_path}",
            *self._location,
            "--worker=all",
        ]


def _repo_files() -> tuple[list[str], str]:
    """Returns the repository-relative files --copy_repo packs, and their source."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True, timeout=60
        ).stdout.decode()
        tracked = [path for path in listed.split("\0") if path]
    except (OSError, subprocess.SubprocessError):
        tracked = []
    # A tracked file deleted in the working tree is skipped, not an error.
    files = [path for path in tracked if os.path.isfile(os.path.join(REPO_ROOT, path))]
    if files:
        return files, "git ls-files"
    for path in _FALLBACK_PATHS:
        full = os.path.join(REPO_ROOT, path)
        if os.path.isfile(full):
            files.append(path)
        for root, dirs, names in os.walk(full):
            dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_DIRS)
            for name in sorted(names):
                if not name.endswith(".pyc"):
                    files.append(os.path.relpath(os.path.join(root, name), REPO_ROOT))
    return files, "not a git checkout with tracked files; packed " + " ".join(_FALLBACK_PATHS)


def _write_tarball(files: Sequence[str]) -> str:
    """Packs `files` into a new temporary .tar.gz; returns its path."""
    fd, path = tempfile.mkstemp(prefix="podfit-", suffix=".tar.gz")
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            for name in files:
                tar.add(os.path.join(REPO_ROOT, name), arcname=name, recursive=False)
    except BaseException:
        os.unlink(path)
        raise
    return path


def _multislice_env(slice_id: int, num_slices: int, coordinator: str) -> str:
    """The environment one slice's workers need to join the others (empty for one slice)."""
    if num_slices == 1:
        return ""
    port = _MEGASCALE_PORT.value
    return (
        f"MEGASCALE_COORDINATOR_ADDRESS={shlex.quote(f'{coordinator}:{port}')} "
        f"MEGASCALE_NUM_SLICES={num_slices} MEGASCALE_SLICE_ID={slice_id} "
        f"MEGASCALE_PORT={port} "
    )


def _commands(
    slices: Sequence[_Gcloud], tarball: str, passthrough: Sequence[str], coordinator: str
) -> tuple[list[list[str]], list[list[str]]]:
    """Returns the set-up steps (run one after the other) and the launches (run together)."""
    remote_dir = shlex.quote(_REMOTE_DIR.value)
    setup = []
    for gcloud in slices:
        if _COPY_REPO.value:
            setup.append(gcloud.scp(tarball, _REMOTE_TARBALL))
            setup.append(
                gcloud.ssh(f"mkdir -p {remote_dir} && tar -xzf {_REMOTE_TARBALL} -C {remote_dir}")
            )
        if _INSTALL.value:
            setup.append(gcloud.ssh(f"cd {remote_dir} && python3 -m pip install -q -e '.[tpu]'"))
    launch = " ".join(["python3", "-m", "launcher.main", *map(shlex.quote, passthrough)])
    launches = [
        gcloud.ssh(f"cd {remote_dir} && {_multislice_env(i, len(slices), coordinator)}{launch}")
        for i, gcloud in enumerate(slices)
    ]
    return setup, launches


def _coordinator(first: _Gcloud, tpu: str, num_slices: int) -> str:
    """Worker 0 of the first slice, for MEGASCALE_COORDINATOR_ADDRESS ("" for one slice)."""
    if num_slices == 1:
        return ""
    if _MEGASCALE_COORDINATOR.value:
        return _MEGASCALE_COORDINATOR.value
    if _DRY_RUN.value:
        print(
            f"launch_tpu_pod: would run: {shlex.join(first.describe_worker0_ip())}", file=sys.stderr
        )
        return _DRY_RUN_COORDINATOR.format(tpu=tpu)
    command = first.describe_worker0_ip()
    print(f"launch_tpu_pod: running: {shlex.join(command)}", flush=True)
    found = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
    address = found.stdout.strip()
    if found.returncode != 0 or not address:
        _usage_error(
            f"could not find worker 0's address of {tpu}; pass --megascale_coordinator. "
            f"Received: exit {found.returncode}, output {address!r}, {found.stderr.strip()!r}"
        )
    return address


def _exit_code(returncode: int) -> int:
    """Maps subprocess' -SIG for a process killed by a signal to the shell's 128+SIG."""
    return 128 - returncode if returncode < 0 else returncode


def _run(setup: Sequence[Sequence[str]], launches: Sequence[Sequence[str]]) -> int:
    total = len(setup) + len(launches)
    for step, command in enumerate(setup, start=1):
        print(f"launch_tpu_pod: running: {shlex.join(command)}", flush=True)
        returncode = subprocess.run(command, check=False).returncode
        if returncode != 0:
            print(
                f"launch_tpu_pod: step {step} of {total} exited "
                f"{_exit_code(returncode)}; the remaining steps were not run",
                file=sys.stderr,
                flush=True,
            )
            return _exit_code(returncode)
    # Every slice must be launched before any can start: they join one job.
    procs = []
    try:
        for command in launches:
            print(f"launch_tpu_pod: running: {shlex.join(command)}", flush=True)
            procs.append(subprocess.Popen(command))
        codes = [_exit_code(proc.wait()) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
    failed = [(i, code) for i, code in enumerate(codes) if code != 0]
    for i, code in failed:
        print(f"launch_tpu_pod: slice {i} exited {code}", file=sys.stderr, flush=True)
    return failed[0][1] if failed else 0


def main(argv: list[str]) -> int:
    passthrough = argv[1:]
    _validate()
    tpus = _tpus()
    slices = [_Gcloud(tpu, _ZONE.value, _PROJECT.value) for tpu in tpus]
    files, source = _repo_files() if _COPY_REPO.value else ([], "")
    coordinator = _coordinator(slices[0], tpus[0], len(slices))
    if _DRY_RUN.value:
        if _COPY_REPO.value:
            print(f"launch_tpu_pod: would pack {len(files)} files ({source})", file=sys.stderr)
        setup, launches = _commands(slices, _DRY_RUN_TARBALL, passthrough, coordinator)
        for command in [*setup, *launches]:
            print(shlex.join(command))
        return 0
    tarball = None
    try:
        if _COPY_REPO.value:
            tarball = _write_tarball(files)
            print(f"launch_tpu_pod: packed {len(files)} files ({source}) into {tarball}")
        return _run(*_commands(slices, tarball or "", passthrough, coordinator))
    except KeyboardInterrupt:
        print("launch_tpu_pod: interrupted", file=sys.stderr)
        return 130
    finally:
        if tarball is not None:
            os.unlink(tarball)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
