"""Manifest shares: each process checksums what it wrote and verifies a share of the files."""

import json
import zlib

import numpy as np
import pytest

import checkpointing
from checkpointing import layout, manifest, retry
from checkpointing.coordination import Coordinator
from checkpointing.manifest import Verdict
from tests.checkpointing.common import make_data, make_model

# A step as two processes write it: each its own OCDBT directory, process 0 the rest.
FILES = {
    "_CHECKPOINT_METADATA": b"m" * 10,
    "pytree/manifest.ocdbt": b"o" * 20,
    "pytree/ocdbt.process_0/d/aa": b"a" * 300,
    "pytree/ocdbt.process_0/manifest.ocdbt": b"b" * 30,
    "pytree/ocdbt.process_1/d/cc": b"c" * 280,
    "pytree/ocdbt.process_1/d/dd": b"d" * 40,
    "podfit/data.json": b"{}",
}


@pytest.fixture
def step_dir(tmp_path):
    step = tmp_path / "12"
    for name, data in FILES.items():
        (step / name).parent.mkdir(parents=True, exist_ok=True)
        (step / name).write_bytes(data)
    return step


def test_writer_of():
    assert layout.writer_of("pytree/ocdbt.process_3/d/ab") == 3
    assert layout.writer_of("pytree/ocdbt.process_0/manifest.ocdbt") == 0
    assert layout.writer_of("pytree/manifest.ocdbt") == 0
    assert layout.writer_of("pytree/ocdbt.process_x/d/ab") == 0


def test_each_process_checksums_what_it_wrote(step_dir):
    manifest.manifest_path(step_dir).write_text("{}")  # Never listed itself.
    everything = manifest.checksums(step_dir)
    assert sorted(everything) == sorted(FILES)
    first, second = manifest.checksums(step_dir, 0), manifest.checksums(step_dir, 1)
    assert sorted(second) == ["pytree/ocdbt.process_1/d/cc", "pytree/ocdbt.process_1/d/dd"]
    assert not first.keys() & second.keys()
    assert {**first, **second} == everything
    assert manifest.checksums(step_dir, 2) == {}
    assert everything["pytree/ocdbt.process_1/d/dd"]["size"] == 40


def test_a_manifest_gathered_from_parts_verifies(step_dir):
    parts = [manifest.checksums(step_dir, i) for i in (0, 1)]
    manifest.write(step_dir, {k: v for part in parts for k, v in part.items()})
    assert manifest.verify(step_dir) == Verdict(12, "ok", (), len(FILES))


@pytest.mark.parametrize("count", [1, 2, 3, 5, 9])
def test_shares_are_disjoint_cover_every_file_and_balance_bytes(count):
    sizes = {f"f{i}": (i * 7919) % 1000 + 1 for i in range(8)}
    shares = [manifest.share_of(sizes, (i, count)) for i in range(count)]
    assert sorted(n for share in shares for n in share) == sorted(sizes)
    loads = [sum(sizes[n] for n in share) for share in shares]
    # Greedy largest-first: no share exceeds another by more than the largest file.
    assert max(loads) - min(loads) <= max(sizes.values())
    assert shares == [
        manifest.share_of(dict(reversed(sizes.items())), (i, count)) for i in range(count)
    ]


@pytest.mark.parametrize("part", [(2, 2), (-1, 2), (0, 0)])
def test_bad_share(part):
    with pytest.raises(ValueError, match=r"Received: part="):
        manifest.share_of({"a": 1}, part)


def test_each_share_finds_only_its_damage(step_dir):
    manifest.write(step_dir)
    victim = "pytree/ocdbt.process_1/d/cc"
    (step_dir / victim).write_bytes(b"x" * 280)
    verdicts = [manifest.verify(step_dir, (i, 2)) for i in (0, 1)]
    assert sorted(v.status for v in verdicts) == ["damaged", "ok"]
    assert sum(v.files for v in verdicts) == len(FILES)
    merged = manifest.merge(verdicts)
    assert merged.status == "damaged" and len(merged.problems) == 1
    assert merged.problems[0].startswith(f"{victim}: crc32")
    assert merged == manifest.verify(step_dir)
    assert Verdict.from_json(merged.to_json()) == merged


@pytest.fixture
def no_backoff(monkeypatch):
    monkeypatch.setattr(retry, "READ_BACKOFF_S", 0.0)


def _failing_checksum(monkeypatch, failures: int):
    """`manifest.checksum` failing `failures` times with EIO on file "aa"; returns the count."""
    real, calls = manifest.checksum, []

    def failing(path):
        if path.name == "aa":
            calls.append(path)
            if len(calls) <= failures:
                raise OSError(5, "Input/output error")
        return real(path)

    monkeypatch.setattr(manifest, "checksum", failing)
    return calls


def test_a_transient_read_error_is_retried_not_damage(step_dir, monkeypatch, no_backoff):
    manifest.write(step_dir)
    calls = _failing_checksum(monkeypatch, retry.READ_TRIES - 1)
    assert manifest.verify(step_dir) == Verdict(12, "ok", (), len(FILES))
    assert len(calls) == retry.READ_TRIES


def test_a_persistent_read_error_is_raised_not_damage(step_dir, monkeypatch, no_backoff):
    manifest.write(step_dir)
    calls = _failing_checksum(monkeypatch, retry.READ_TRIES)
    with pytest.raises(OSError, match="Input/output error"):
        manifest.verify(step_dir)
    assert len(calls) == retry.READ_TRIES


def test_a_missing_file_is_damage_and_not_retried(step_dir, monkeypatch, no_backoff):
    manifest.write(step_dir)
    (step_dir / "pytree/ocdbt.process_1/d/dd").unlink()
    sleeps = []
    monkeypatch.setattr(retry.time, "sleep", sleeps.append)
    verdict = manifest.verify(step_dir)
    assert verdict.status == "damaged" and sleeps == []
    crc = f"{zlib.crc32(b'd' * 40):08x}"
    assert verdict.problems == (
        f"pytree/ocdbt.process_1/d/dd: missing (expected 40 bytes, crc32 {crc})",
    )


def test_merge():
    ok = Verdict(3, "ok", (), 2)
    bad = Verdict(3, "damaged", ("f: missing",), 1)
    unverified = Verdict(3, "unverified", ("no manifest",))
    assert manifest.merge([ok, ok]) == Verdict(3, "ok", (), 4)
    assert manifest.merge([ok, bad, bad]) == Verdict(3, "damaged", ("f: missing",), 4)
    assert manifest.merge([unverified, unverified]).problems == ("no manifest",)
    assert manifest.merge([bad, unverified]).status == "damaged"
    with pytest.raises(ValueError, match="Received: verdicts"):
        manifest.merge([])


def test_gather_and_share_with_one_process():
    coordinator = Coordinator.create("/tmp/x", 0, 0, 5.0)
    assert coordinator.gather("name", 1, "value") == ["value"]
    assert coordinator.share("name", 1, "value") == "value"


def test_callback_manifest_lists_every_file(tmp_path):
    directory = tmp_path / "ckpt"
    x, y = make_data()
    model = make_model()
    callback = checkpointing.OrbaxCheckpoint(directory, save_freq=4)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[callback])
    for step in checkpointing.list_steps(directory):
        path = layout.step_dir(directory, step.step)
        listed = json.loads(manifest.manifest_path(path).read_text())["files"]
        assert listed == manifest.checksums(path)
    fresh = make_model()
    fresh(np.zeros((1, 8), np.float32))
    assert checkpointing.restore(directory, fresh, 8).step == 8


def test_a_manifest_that_does_not_parse_is_damage_one_that_cannot_be_read_raises(
    step_dir, no_backoff
):
    target = manifest.manifest_path(step_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("{not json")
    verdict = manifest.verify(step_dir)
    assert verdict.status == "damaged"
    assert "unreadable manifest" in verdict.problems[0]
    target.unlink()
    target.mkdir()  # Reading it fails with IsADirectoryError, an OSError.
    with pytest.raises(IsADirectoryError):
        manifest.verify(step_dir)


def test_a_verification_that_raises_is_raised_by_restore_latest_and_nothing_moves(
    tmp_path, monkeypatch
):
    directory = tmp_path / "ckpt"
    x, y = make_data()
    model = make_model()
    callback = checkpointing.OrbaxCheckpoint(directory, save_freq=4, max_to_keep=None)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[callback])
    assert [s.step for s in checkpointing.list_steps(directory)] == [4, 8]
    real = manifest.verify

    def failing(path, part=(0, 1)):
        if path.name == "8":
            raise OSError(5, "injected read failure")
        return real(path, part)

    monkeypatch.setattr(manifest, "verify", failing)
    fresh = make_model()
    fresh(np.zeros((1, 8), np.float32))
    with pytest.raises(OSError, match="injected read failure"):
        checkpointing.restore_latest(directory, fresh)
    assert [s.step for s in checkpointing.list_steps(directory)] == [4, 8]
    assert sorted(p.name for p in directory.iterdir()) == ["4", "8"]
