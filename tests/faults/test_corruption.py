"""Corrupted steps: verify names the damage, restore_latest falls back and moves it aside.

Damage is a missing file or one of another size or checksum; a file that
cannot be read (an OSError) is retried, then raised: not damage.

Single process, a tiny Dense model; one training run copied per test.
"""

import logging
import shutil
import subprocess
import sys

import numpy as np
import pytest

import checkpointing
from checkpointing import manifest, retry
from checkpointing.__main__ import main
from tests.checkpointing.common import make_data, make_model
from tests.checkpointing.procs import REPO


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    directory = tmp_path_factory.mktemp("corruption") / "ckpt"
    x, y = make_data()
    model = make_model()
    callback = checkpointing.OrbaxCheckpoint(directory, save_freq=4, max_to_keep=None)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[callback])
    return directory


@pytest.fixture
def ckpt(pristine, tmp_path):
    copy = tmp_path / "ckpt"
    shutil.copytree(pristine, copy)
    return copy


def _data_file(ckpt, step: int):
    """The largest array data file of `step` (what Orbax reads the weights from)."""
    files = [p for p in (ckpt / str(step) / "pytree").rglob("*") if p.is_file() and "/d/" in str(p)]
    return max(files, key=lambda p: p.stat().st_size)


def _restore_latest(ckpt):
    model = make_model()
    model(np.zeros((1, 8), np.float32))
    return checkpointing.restore_latest(ckpt, model), model


def test_every_step_has_a_verified_manifest(ckpt, capsys):
    assert manifest.manifest_path(ckpt / "8").exists()
    assert main(["verify", str(ckpt)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines] == [["4", "ok"], ["8", "ok"]]


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_latest_is_named_and_skipped(ckpt, damage, capsys, caplog):
    target = _data_file(ckpt, 8)
    relative = str(target.relative_to(ckpt / "8"))
    data = bytearray(target.read_bytes())
    if damage == "truncate":
        target.write_bytes(data[: len(data) // 2])
    else:
        data[len(data) // 2] ^= 0xFF
        data[-1] ^= 0xFF
        target.write_bytes(data)

    assert main(["verify", str(ckpt)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["4", "ok"]
    assert lines[1].split()[:2] == ["8", "damaged:"] and relative in lines[1]
    assert ("size" if damage == "truncate" else "crc32") in lines[1]

    model = make_model()
    model(np.zeros((1, 8), np.float32))
    with pytest.raises(checkpointing.CheckpointCorruptError, match=relative):
        checkpointing.restore(ckpt, model, 8)
    assert (ckpt / "8").exists()  # restore() reports; only restore_latest moves aside.

    with caplog.at_level(logging.WARNING):
        restored, model = _restore_latest(ckpt)
    assert restored.step == 4
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("step 8" in m and "DAMAGED" in m and relative in m for m in errors), errors
    assert any("instead of damaged step(s) [8]" in m for m in errors), errors
    assert any("moved damaged step 8 aside" in m for m in errors), errors
    assert int(model.optimizer.iterations) == 4
    # Moved aside, whole: renamed, not deleted, and no longer listed.
    assert sorted(p.name for p in ckpt.iterdir()) == ["4", "8.damaged-0"]
    assert (ckpt / "8.damaged-0" / relative).stat().st_size == len(data) // (
        2 if damage == "truncate" else 1
    )
    assert [s.step for s in checkpointing.list_steps(ckpt)] == [4]


def test_the_run_that_fell_back_commits_the_damaged_step_number_again(ckpt):
    target = _data_file(ckpt, 8)
    damaged = target.read_bytes()[:-1]
    target.write_bytes(damaged)
    relative = target.relative_to(ckpt / "8")
    restored, model = _restore_latest(ckpt)
    assert restored.step == 4
    # Training goes on from step 4 and saves step 8 again.
    x, y = make_data()
    callback = checkpointing.OrbaxCheckpoint(ckpt, save_freq=4, max_to_keep=None)
    model.fit(x[:64], y[:64], batch_size=16, epochs=1, verbose=0, callbacks=[callback])
    assert [s.step for s in checkpointing.list_steps(ckpt)] == [4, 8]
    assert [v.status for v in checkpointing.verify_steps(ckpt)] == ["ok", "ok"]
    assert (ckpt / "8.damaged-0" / relative).read_bytes() == damaged
    # A second damaged step 8 goes beside the first.
    _data_file(ckpt, 8).write_bytes(b"")
    assert _restore_latest(ckpt)[0].step == 4
    assert sorted(p.name for p in ckpt.iterdir()) == ["4", "8.damaged-0", "8.damaged-1"]


def test_missing_manifest_is_unverified_but_restorable(ckpt, capsys, caplog):
    manifest.manifest_path(ckpt / "8").unlink()
    assert main(["verify", str(ckpt), "--step", "8"]) == 0
    assert capsys.readouterr().out.split()[:2] == ["8", "unverified:"]
    with caplog.at_level(logging.WARNING):
        restored, _ = _restore_latest(ckpt)
    assert restored.step == 8
    assert any(
        r.levelno == logging.WARNING
        and "step 8" in r.getMessage()
        and "unverified" in r.getMessage()
        for r in caplog.records
    )


def test_no_step_verifies(ckpt):
    for step in (4, 8):
        target = _data_file(ckpt, step)
        target.write_bytes(target.read_bytes()[:10])
    model = make_model()
    model(np.zeros((1, 8), np.float32))
    with pytest.raises(
        checkpointing.CheckpointCorruptError, match=r"every committed step is damaged"
    ):
        checkpointing.restore_latest(ckpt, model)
    # Nothing usable: nothing is moved aside (a rerun must not start afresh).
    assert sorted(p.name for p in ckpt.iterdir()) == ["4", "8"]


def test_an_unreadable_step_is_raised_not_damage(ckpt, monkeypatch):
    monkeypatch.setattr(retry, "READ_BACKOFF_S", 0.0)
    real, calls = manifest.checksum, []

    def failing(path):
        calls.append(path)
        raise OSError(5, "Input/output error (injected)")

    monkeypatch.setattr(manifest, "checksum", failing)
    model = make_model()
    model(np.zeros((1, 8), np.float32))
    with pytest.raises(OSError, match="Input/output error"):
        checkpointing.restore_latest(ckpt, model)
    assert len(calls) == retry.READ_TRIES  # Tried again, then raised.
    assert int(model.optimizer.iterations) == 0  # Nothing assigned.
    monkeypatch.setattr(manifest, "checksum", real)
    assert sorted(p.name for p in ckpt.iterdir()) == ["4", "8"]  # Nothing moved.
    assert [v.status for v in checkpointing.verify_steps(ckpt)] == ["ok", "ok"]


def test_damaged_manifest(ckpt, capsys):
    manifest.manifest_path(ckpt / "4").write_text("{not json")
    assert main(["verify", str(ckpt)]) == 1
    assert "unreadable manifest" in capsys.readouterr().out.splitlines()[0]


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["verify", "/nonexistent/ckpt"], "Received: DIR=/nonexistent/ckpt"),
        (["verify", "{ckpt}", "--step", "99"], "Received: --step=99"),
        (["verify", "{ckpt}", "--step", "x"], "Received: verify {ckpt} --step x"),
    ],
)
def test_bad_input(ckpt, argv, expected, capsys):
    argv = [a.format(ckpt=ckpt) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected.format(ckpt=ckpt) in err


def test_cli_exit_codes(ckpt):
    target = _data_file(ckpt, 8)
    target.write_bytes(target.read_bytes()[:-1])
    run = subprocess.run(
        [sys.executable, "-m", "checkpointing", "verify", str(ckpt)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1, run.stderr
    assert "damaged" in run.stdout and "Traceback" not in run.stderr
