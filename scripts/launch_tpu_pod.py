"""Runs the launcher on every host of a Cloud TPU pod slice through gcloud.

Usage:
  python scripts/launch_tpu_pod.py --tpu=my-v4-32 --zone=us-central2-b \\
      [--project=my-project] [--copy_repo] [--install] [--remote_dir=podfit] \\
      [--dry_run] -- --config=configs/lm.py --workdir=gs://my-bucket/runs/lm

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
the commands, one per line, and runs nothing.
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

_TPU = flags.DEFINE_string("tpu", None, "Name of the Cloud TPU VM (pod slice).")
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


def _usage_error(message: str) -> None:
    launch_flags.usage_error("launch_tpu_pod", message)


_parse_flags = launch_flags.parser("launch_tpu_pod", "launch_tpu_pod.py --tpu=T --zone=Z --")


def _validate() -> None:
    if not _TPU.value:
        _usage_error(f"--tpu must name the Cloud TPU VM. Received: {_TPU.value!r}")
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


def _commands(gcloud: _Gcloud, tarball: str, passthrough: Sequence[str]) -> list[list[str]]:
    remote_dir = shlex.quote(_REMOTE_DIR.value)
    commands = []
    if _COPY_REPO.value:
        commands.append(gcloud.scp(tarball, _REMOTE_TARBALL))
        commands.append(
            gcloud.ssh(f"mkdir -p {remote_dir} && tar -xzf {_REMOTE_TARBALL} -C {remote_dir}")
        )
    if _INSTALL.value:
        commands.append(gcloud.ssh(f"cd {remote_dir} && python3 -m pip install -q -e '.[tpu]'"))
    launch = " ".join(["python3", "-m", "launcher.main", *map(shlex.quote, passthrough)])
    commands.append(gcloud.ssh(f"cd {remote_dir} && {launch}"))
    return commands


def _exit_code(returncode: int) -> int:
    """Maps subprocess' -SIG for a process killed by a signal to the shell's 128+SIG."""
    return 128 - returncode if returncode < 0 else returncode


def _run(commands: Sequence[Sequence[str]]) -> int:
    for step, command in enumerate(commands, start=1):
        print(f"launch_tpu_pod: running: {shlex.join(command)}", flush=True)
        returncode = subprocess.run(command, check=False).returncode
        if returncode != 0:
            print(
                f"launch_tpu_pod: step {step} of {len(commands)} exited "
                f"{_exit_code(returncode)}; the remaining steps were not run",
                file=sys.stderr,
                flush=True,
            )
            return _exit_code(returncode)
    return 0


def main(argv: list[str]) -> int:
    passthrough = argv[1:]
    _validate()
    gcloud = _Gcloud(_TPU.value, _ZONE.value, _PROJECT.value)
    files, source = _repo_files() if _COPY_REPO.value else ([], "")
    if _DRY_RUN.value:
        if _COPY_REPO.value:
            print(f"launch_tpu_pod: would pack {len(files)} files ({source})", file=sys.stderr)
        for command in _commands(gcloud, _DRY_RUN_TARBALL, passthrough):
            print(shlex.join(command))
        return 0
    tarball = None
    try:
        if _COPY_REPO.value:
            tarball = _write_tarball(files)
            print(f"launch_tpu_pod: packed {len(files)} files ({source}) into {tarball}")
        return _run(_commands(gcloud, tarball or "", passthrough))
    except KeyboardInterrupt:
        print("launch_tpu_pod: interrupted", file=sys.stderr)
        return 130
    finally:
        if tarball is not None:
            os.unlink(tarball)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
