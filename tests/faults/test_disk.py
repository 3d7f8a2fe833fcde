"""Disk full during a save: the error surfaces from fit, earlier steps stay intact.

The tests run as root in CI, where chmod does not block writes, so the failure
is injected in-process as OSError(ENOSPC): once in the Orbax save itself, once
in the manifest write that follows the commit. Nothing but the retention
policy deletes a committed step: the steps and manifests written before the
failure are listed, verified and byte-identical afterwards.
"""

import errno

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
