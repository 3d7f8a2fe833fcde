"""Disk full or permission denied during a save: real faults, earlier steps intact.

Real faults, in a child process (tests/faults/disk_worker.py) that trains and
saves every 4 steps, then breaks the disk just before the save of step 8:

- permission denied: the checkpoint directory made read-only (chmod 0o555).
  Root ignores file modes, so as root the child runs without
  CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH (`setpriv --bounding-set`): it is
  still uid 0, owns its files and can read /root (where the interpreter
  lives), but the kernel now refuses the write with EACCES.
- disk full: the soft RLIMIT_FSIZE lowered to 64 bytes, SIGXFSZ ignored: the
  kernel fails writes past 64 bytes with EFBIG ("File too large"), as a full
  disk fails them with ENOSPC, without mounting anything.

The child exits non-zero naming the error; the steps committed before the
fault are listed, verified and their manifests byte-identical.

The in-process tests below inject OSError(ENOSPC) at two precise points:
in the Orbax save itself and in the manifest write that follows the commit.
"""

import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from orbax.checkpoint import v1 as ocp

import checkpointing
from checkpointing import manifest
from tests.checkpointing.common import make_data, make_model


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device (injected)")


def _manifests(directory):
    return {
        step: manifest.manifest_path(directory / str(step)).read_bytes()
        for step in (s.step for s in checkpointing.list_steps(directory))
    }


@pytest.fixture
def trained(tmp_path):
    """Steps 4 and 8 committed and verified; the model to go on training."""
    directory = tmp_path / "ckpt"
    x, y = make_data()
    model = make_model()
    callback = checkpointing.OrbaxCheckpoint(directory, save_freq=4, max_to_keep=2)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[callback])
    assert [v.status for v in checkpointing.verify_steps(directory)] == ["ok", "ok"]
    return directory, model, (x, y), _manifests(directory)


def test_disk_full_in_orbax_save(trained, monkeypatch):
    directory, model, (x, y), before = trained
    monkeypatch.setattr(ocp.training.Checkpointer, "save_checkpointables", _enospc)
    # max_to_keep=1: had the save committed, retention would delete step 4.
    callback = checkpointing.OrbaxCheckpoint(directory, save_freq=4, max_to_keep=1)
    with pytest.raises(checkpointing.CheckpointWriteError, match="No space left"):
        model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[callback])
    monkeypatch.undo()
    assert [s.step for s in checkpointing.list_steps(directory)] == [4, 8]
    assert [v.status for v in checkpointing.verify_steps(directory)] == ["ok", "ok"]
    assert _manifests(directory) == before
    assert sorted(p.name for p in directory.iterdir()) == ["4", "8"]


def test_disk_full_in_manifest_write(trained, monkeypatch, caplog):
    directory, model, (x, y), before = trained
    monkeypatch.setattr(manifest, "write", _enospc)
    callback = checkpointing.OrbaxCheckpoint(directory, save_freq=4, max_to_keep=None)
    with pytest.raises(checkpointing.CheckpointWriteError, match="No space left"):
        model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[callback])
    monkeypatch.undo()
    # Step 12 was committed before the manifest failed: usable, unverified.
    steps = [s.step for s in checkpointing.list_steps(directory)]
    assert steps == [4, 8, 12]
    verdicts = checkpointing.verify_steps(directory)
    assert [v.status for v in verdicts] == ["ok", "ok", "unverified"]
    assert {s: b for s, b in before.items()} == {
        s: manifest.manifest_path(directory / str(s)).read_bytes() for s in (4, 8)
    }
    fresh = make_model()
    fresh(np.zeros((1, 8), np.float32))
    assert checkpointing.restore_latest(directory, fresh).step == 12


# -- real faults, in a child process ----------------------------------------

REPO = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT_S = 120


def _setpriv() -> list[str]:
    """The prefix that runs a command without overriding file permissions."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root and setpriv (util-linux) is missing")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search"]


@pytest.fixture
def workdir():
    path = Path(tempfile.mkdtemp(prefix="podfit_disk_", dir="/tmp"))
    yield path
    if (path / "ckpt").exists():
        os.chmod(path / "ckpt", 0o755)
    shutil.rmtree(path, ignore_errors=True)


def _run_child(workdir: Path, fault: str):
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workdir),
        "PYTHONPATH": str(REPO),
        "PYTHONDONTWRITEBYTECODE": "1",
        "KERAS_BACKEND": "jax",
        "JAX_PLATFORMS": "cpu",
    }
    command = [
        *_setpriv(),
        sys.executable,
        "-m",
        "tests.faults.disk_worker",
        str(workdir),
        fault,
    ]
    start = time.monotonic()
    # Pipes, not files: RLIMIT_FSIZE does not limit them.
    result = subprocess.run(
        command, cwd=REPO, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S
    )
    output = result.stdout + result.stderr
    print(f"child {fault}: rc={result.returncode} in {time.monotonic() - start:.1f}s")
    assert "fault " + fault + " on" in output, output[-4000:]
    return result.returncode, output


def _manifest_hashes(directory: Path, steps) -> dict[str, str]:
    return {
        str(step): hashlib.sha256(
            manifest.manifest_path(directory / str(step)).read_bytes()
        ).hexdigest()
        for step in steps
    }


def _assert_step_4_intact(workdir: Path) -> None:
    directory = workdir / "ckpt"
    before = json.loads((workdir / "before.json").read_text())
    assert list(before) == ["4"]
    assert _manifest_hashes(directory, [4]) == before
    verdicts = {v.step: v.status for v in checkpointing.verify_steps(directory)}
    assert verdicts[4] == "ok", verdicts


FAULTS = {
    "readonly": r"Permission denied|\[Errno 13\]|EACCES",
    "fsize": r"File too large|\[Errno 27\]|os_error_code='27'",
}


@pytest.mark.parametrize(
    "fault", [pytest.param("readonly", id="permission"), pytest.param("fsize", id="full")]
)
def test_real_fault_raises_and_keeps_earlier_steps(workdir, fault):
    rc, output = _run_child(workdir, fault)
    assert rc != 0, output[-4000:]
    assert "CheckpointWriteError: writing checkpoint step 8 failed" in output, output[-4000:]
    error_line = next(
        line for line in output.splitlines() if "CheckpointWriteError: writing" in line
    )
    assert re.search(FAULTS[fault], error_line), error_line
    assert "disk_worker: done" not in output
    directory = workdir / "ckpt"
    assert [s.step for s in checkpointing.list_steps(directory)] == [4]
    _assert_step_4_intact(workdir)


@pytest.mark.multiprocess
def test_launcher_stops_promptly_on_permission_denied(workdir):
    """Through the launcher: the checkpoint directory turns read-only mid-run.

    The launcher exits 1 naming the error within seconds (it leaves with
    `os._exit`, not waiting for Orbax threads stuck on the step directory),
    and the steps committed before stay listed and verified.
    """
    ckpt = workdir / "run" / "checkpoints"
    command = [
        *_setpriv(),
        sys.executable,
        "-m",
        "launcher.main",
        "--config=configs/mlp.py:tiny",
        f"--workdir={workdir / 'run'}",
        "--config.trainer.steps_per_epoch=400",
        "--config.trainer.epochs=1",
        "--config.checkpoint.save_freq=5",
        "--config.checkpoint.max_to_keep=1000",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "KERAS_BACKEND": "jax", "HOME": str(workdir)}
    proc = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while not checkpointing_steps(ckpt) and time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(proc.stdout.read()[-4000:])
            time.sleep(0.05)
        before = checkpointing_steps(ckpt)
        assert before, "no step committed in 120 s"
        os.chmod(ckpt, 0o555)
        broken = time.monotonic()
        output, _ = proc.communicate(timeout=90)
        took = time.monotonic() - broken
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if ckpt.exists():
            os.chmod(ckpt, 0o755)
    print(f"launcher exit {proc.returncode} {took:.1f}s after the chmod")
    assert proc.returncode == 1, output[-4000:]
    assert "Permission denied" in output, output[-4000:]
    assert took < 60, f"the launcher took {took:.0f}s to stop"
    after = checkpointing_steps(ckpt)
    assert set(before) <= set(after), (before, after)
    assert all(v.status == "ok" for v in checkpointing.verify_steps(ckpt))


def checkpointing_steps(directory: Path) -> list[int]:
    """Committed steps with a manifest (the writer finished them), [] before any."""
    if not directory.exists():
        return []
    return [
        s.step
        for s in checkpointing.list_steps(directory)
        if manifest.manifest_path(directory / str(s.step)).exists()
    ]
