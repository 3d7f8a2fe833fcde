"""Background writes: snapshot semantics, queue depth 1, failures, crashes."""

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest
from orbax.checkpoint import v1 as ocp

import checkpointing
from checkpointing import writer
from tests.checkpointing.common import make_data, make_model

REPO = Path(__file__).resolve().parents[2]
BATCH = 16


def steps(directory) -> list[int]:
    return [info.step for info in checkpointing.list_steps(directory)]


def record_of(directory, step):
    return checkpointing.restore(directory, make_model(), step)


def test_snapshot_copies_on_device_keeping_sharding():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:4]).reshape(2, 2), ("a", "b"))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("a", None))
    expected = np.arange(8.0).reshape(4, 2)

    def tree():
        return {"w": jax.device_put(jnp.asarray(expected), sharding), "n": np.ones(3)}

    assert writer.fits_on_device(tree())  # CPU reports no memory limit.
    for mode, memory_kind in (("auto", "device"), ("device", "device"), ("host", "pinned_host")):
        original = tree()
        copy = writer.snapshot(original, mode)
        original["w"].delete()  # What the next step's buffer donation does.
        assert copy["w"].sharding.spec == sharding.spec
        assert copy["w"].sharding.memory_kind == memory_kind
        np.testing.assert_array_equal(np.asarray(copy["w"]), expected)
        assert copy["n"] is not original["n"]


def test_slow_writes_wait_for_each_other_and_none_is_dropped(tmp_path, monkeypatch):
    """Queue depth 1: fit waits for the previous write, never skips a save."""
    original = ocp.handlers.JsonHandler._background_save
    in_flight = []

    async def slow(self, directory, checkpointable, **kwargs):
        if "progress" in checkpointable:  # Our record, not Orbax's metrics file.
            in_flight.append(time.monotonic())
            await asyncio.sleep(0.3)
        return await original(self, directory, checkpointable, **kwargs)

    monkeypatch.setattr(ocp.handlers.JsonHandler, "_background_save", slow)
    busy_after_save = []

    class Probe(keras.callbacks.Callback):
        # The save of step s is decided at the start of batch s (in the
        # training thread), right before this hook of the same batch.
        def on_train_batch_begin(self, batch, logs=None):
            busy_after_save.append(callback._writer.busy)

    x, y = make_data()
    callback = checkpointing.OrbaxCheckpoint(tmp_path, save_freq=2, max_to_keep=None)
    started = time.monotonic()
    make_model().fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[callback, Probe()])
    assert steps(tmp_path) == [2, 4, 6, 8]  # All durable when fit returns.
    assert len(in_flight) == 4
    assert time.monotonic() - started >= 4 * 0.3  # Serialized, one at a time.
    # Right after a save was handed over, the write was still running: fit
    # had blocked only for the snapshot.
    assert busy_after_save[2] and busy_after_save[4]


def test_failure_in_the_background_write_is_raised_from_fit(tmp_path, monkeypatch):
    original = ocp.handlers.JsonHandler._background_save
    calls = []

    async def fail_second(self, directory, checkpointable, **kwargs):
        if "progress" in checkpointable:
            calls.append(checkpointable["progress"]["global_step"])
        if calls == [2, 4]:
            raise OSError("disk full (injected)")
        return await original(self, directory, checkpointable, **kwargs)

    monkeypatch.setattr(ocp.handlers.JsonHandler, "_background_save", fail_second)
    x, y = make_data()
    callback = checkpointing.OrbaxCheckpoint(tmp_path, save_freq=2, max_to_keep=None)
    with pytest.raises(checkpointing.CheckpointWriteError, match="disk full") as raised:
        make_model().fit(x, y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[callback])
    assert "step 4" in str(raised.value)
    assert steps(tmp_path) == [2]  # The failed step is invisible.
    assert record_of(tmp_path, 2).step == 2


def test_failure_of_the_final_write_is_raised_at_train_end(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError("bucket gone (injected)")

    x, y = make_data()
    callback = checkpointing.OrbaxCheckpoint(tmp_path, save_freq=100)
    monkeypatch.setattr(callback, "_write", fail)
    with pytest.raises(checkpointing.CheckpointWriteError, match="bucket gone"):
        make_model().fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[callback])


def test_leftover_tmp_directory_is_never_listed_or_restored(tmp_path, recwarn):
    x, y = make_data()
    model = make_model()
    callback = checkpointing.OrbaxCheckpoint(tmp_path, save_freq=4, max_to_keep=None)
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[callback])
    junk = tmp_path / "99.orbax-checkpoint-tmp-1234"
    (junk / "pytree").mkdir(parents=True)
    (junk / "pytree" / "garbage").write_bytes(b"\0" * 16)
    assert steps(tmp_path) == [4, 8]
    assert checkpointing.restore_latest(tmp_path, make_model()).step == 8
    assert int(keras.saving.load_model(tmp_path).optimizer.iterations) == 8
    # A step-named directory Orbax did not finalize (no step metadata).
    (tmp_path / "50" / "pytree").mkdir(parents=True)
    assert steps(tmp_path) == [4, 8]
    assert checkpointing.restore_latest(tmp_path, make_model()).step == 8
    # The next training run on the directory deletes the leftover.
    callback = checkpointing.OrbaxCheckpoint(tmp_path, save_freq=4, max_to_keep=None)
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[callback])
    assert not junk.exists()
    assert steps(tmp_path) == [4, 8, 12, 16]
    # "50" was never taken for the latest step.
    assert not [w for w in recwarn if "holds step" in str(w.message)]


CRASHING_CHILD = textwrap.dedent(
    """
    import asyncio, os, sys
    os.environ["KERAS_BACKEND"] = "jax"
    sys.path.insert(0, {repo!r})
    from orbax.checkpoint import v1 as ocp
    import checkpointing
    from tests.checkpointing.common import make_data, make_model

    original = ocp.handlers.JsonHandler._background_save

    async def hang_at_step_6(self, directory, checkpointable, **kwargs):
        if checkpointable.get("progress", {{}}).get("global_step") == 6:
            open({marker!r}, "w").close()  # The test kills us now.
            await asyncio.sleep(3600)
        return await original(self, directory, checkpointable, **kwargs)

    ocp.handlers.JsonHandler._background_save = hang_at_step_6
    x, y = make_data()
    callback = checkpointing.OrbaxCheckpoint({directory!r}, save_freq=3, max_to_keep=None)
    make_model().fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[callback])
    """
)


def test_process_killed_during_a_background_write_leaves_no_step(tmp_path):
    directory, marker = tmp_path / "ckpt", tmp_path / "writing"
    script = CRASHING_CHILD.format(repo=str(REPO), marker=str(marker), directory=str(directory))
    log = open(tmp_path / "child.log", "w")
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "JAX_NUM_CPU_DEVICES": "1"},
    )
    try:
        deadline = time.monotonic() + 90
        while not marker.exists():
            assert child.poll() is None, (tmp_path / "child.log").read_text()
            assert time.monotonic() < deadline, "the child never reached the write of step 6"
            time.sleep(0.1)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)
        log.close()
    leftovers = [p.name for p in directory.iterdir() if "orbax-checkpoint-tmp" in p.name]
    assert leftovers, sorted(p.name for p in directory.iterdir())
    assert steps(directory) == [3]
    assert checkpointing.restore_latest(directory, make_model()).step == 3
