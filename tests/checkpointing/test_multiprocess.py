"""Real processes on localhost: 2 processes x 4 CPU devices, gloo collectives."""

import json
import shutil

import numpy as np
import pytest

import checkpointing
from checkpointing import manifest
from tests.checkpointing import procs

pytestmark = pytest.mark.multiprocess


def result(out, mode, process):
    return json.loads((out / f"result_{mode}_p{process}.json").read_text())


def _cluster(tmp_path, mode):
    """Runs a 2 x 4 cluster of workers in `mode`; (checkpoint dir, results dir, exit codes)."""
    directory, out = tmp_path / "ckpt", tmp_path / "out"
    out.mkdir()
    codes = procs.run_all(procs.cluster(mode, 2, 4, "4,2", directory, out), tmp_path / mode, 240)
    return directory, out, codes


def test_save_on_2x4_then_restore_on_1x2_and_1x8(tmp_path):
    directory, out, codes = _cluster(tmp_path, "train")
    assert codes == [0, 0], procs.tails(tmp_path / "train", 2)
    assert [result(out, "train", p)["step"] for p in (0, 1)] == [12, 12]
    assert [result(out, "train", p)["restored"] for p in (0, 1)] == [12, 12]
    best = checkpointing.list_steps(tmp_path / "ckpt_best")
    assert len(best) == 1 and best[0].step in (6, 12)
    infos = checkpointing.list_steps(directory)
    assert [i.step for i in infos] == [8, 12]  # save_freq=4, max_to_keep=2.
    assert infos[-1].topology == "2 proc x 8 cpu, mesh data=4 model=2"

    restores = [
        procs.worker_command("restore", directory, out, devices=2, mesh="1,2"),
        procs.worker_command("restore", directory, out, devices=8, mesh="8,1"),
    ]
    codes = procs.run_all(restores, tmp_path / "restore", 240)
    assert codes == [0, 0], procs.tails(tmp_path / "restore", 2)
    saved = np.load(out / "weights_train_4,2.npz")
    for mesh in ("1,2", "8,1"):
        loaded = np.load(out / f"weights_restore_{mesh}.npz")
        assert sorted(loaded.files) == sorted(saved.files)
        for name in saved.files:
            np.testing.assert_array_equal(loaded[name], saved[name], err_msg=f"{mesh} {name}")
    restored = json.loads((out / "result_restore_8,1.json").read_text())
    assert restored["step"] == 12 and restored["progress"] == [2, 0]

    # Each process checksummed its own array files; process 0 wrote one manifest.
    listed = json.loads(manifest.manifest_path(directory / "12").read_text())["files"]
    assert {n.split("/")[1] for n in listed if "ocdbt.process_" in n} == {
        "ocdbt.process_0",
        "ocdbt.process_1",
    }
    assert listed.keys() == manifest.checksums(directory / "12").keys()
    assert [v.status for v in checkpointing.verify_steps(directory)] == ["ok", "ok"]

    # Damage step 12 and restore on 2 processes again: each verifies a share of
    # the files, and both fall back to step 8 whichever share held the damage.
    damaged = tmp_path / "damaged"
    shutil.copytree(directory, damaged)
    data = [p for p in (damaged / "12").rglob("*") if p.is_file() and "/d/" in str(p)]
    victim = max(data, key=lambda p: p.stat().st_size)
    victim.write_bytes(b"\0" * victim.stat().st_size)
    codes = procs.run_all(
        procs.cluster("restore", 2, 4, "4,2", damaged, out), tmp_path / "restore2", 240
    )
    assert codes == [0, 0], procs.tails(tmp_path / "restore2", 2)
    for p in (0, 1):
        restored = json.loads((out / f"result_restore_4,2_p{p}.json").read_text())
        assert restored["step"] == 8, restored
    # Moved aside once, by one process, after both agreed: renamed, not deleted.
    assert sorted(p.name for p in damaged.iterdir()) == ["12.damaged-0", "8"]
    assert (damaged / "12.damaged-0" / victim.relative_to(damaged / "12")).exists()
    assert [i.step for i in checkpointing.list_steps(damaged)] == [8]

    # A file that process 1 cannot read is an error on both processes, not damage.
    codes = procs.run_all(
        procs.cluster("unreadable", 2, 4, "4,2", directory, out), tmp_path / "unreadable", 240
    )
    assert codes == [1, 1], procs.tails(tmp_path / "unreadable", 2)
    first, second = (result(out, "unreadable", p) for p in (0, 1))
    assert first["error_type"] == "OSError" and second["error_type"] == "OSError"
    assert "process 1: OSError(5, 'Input/output error (injected)" in first["error"], first
    assert "Input/output error (injected)" in second["error"], second
    assert sorted(p.name for p in directory.iterdir()) == ["12", "8"]  # Nothing moved.


def test_a_write_failure_on_one_process_raises_on_every_process(tmp_path):
    directory, out, codes = _cluster(tmp_path, "fail")
    assert codes == [1, 1], procs.tails(tmp_path / "fail", 2)
    failed, peer = result(out, "fail", 1), result(out, "fail", 0)
    assert failed["error_type"] == "CheckpointWriteError"
    assert "injected write failure at step 8" in failed["error"]
    assert peer["error_type"] == "PeerFailedError"
    assert "process 1 failed to write step 8" in peer["error"]
    assert [i.step for i in checkpointing.list_steps(directory)] == [4]
