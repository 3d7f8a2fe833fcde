"""Committed steps leave the page cache (drop_page_cache), measured with mincore(2)."""

import ctypes
import mmap
import os
import sys

import pytest

import checkpointing
from checkpointing import pagecache
from tests.checkpointing.common import make_data, make_model

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="mincore(2) and posix_fadvise are Linux calls"
)


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    return libc


def resident_bytes(path) -> int:
    """Bytes of `path` in the page cache (whole pages), without reading it."""
    size = os.path.getsize(path)
    if size == 0:
        return 0
    libc = _libc()
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), f"mmap {path}")
        try:
            pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
            vec = (ctypes.c_ubyte * pages)()
            if libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), f"mincore {path}")
            return sum(v & 1 for v in vec) * mmap.PAGESIZE
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)


def tree_bytes(directory, min_size: int = 0) -> tuple[int, int]:
    """(size, bytes in the page cache) of the files under `directory` of `min_size` bytes up."""
    files = [os.path.join(r, f) for r, _, names in os.walk(directory) for f in names]
    files = [f for f in files if os.path.getsize(f) >= min_size]
    return sum(os.path.getsize(f) for f in files), sum(resident_bytes(f) for f in files)


@pytest.fixture
def cached_file(tmp_path):
    """A synced 4 MiB file, read back so that it is cached; skips if the cache does not keep it."""
    path = tmp_path / "probe" / "data.bin"
    path.parent.mkdir()
    with open(path, "wb") as f:
        f.write(os.urandom(4 << 20))
        f.flush()
        os.fsync(f.fileno())
    path.read_bytes()
    if resident_bytes(path) < (2 << 20):
        pytest.skip("the page cache did not keep a file just written and read")
    return path


def test_drop_empties_the_page_cache_of_every_file_and_leaves_the_files(cached_file):
    step_dir = cached_file.parent
    (step_dir / "sub").mkdir()
    other = step_dir / "sub" / "small.json"
    other.write_text('{"a": 1}')
    before = cached_file.read_bytes()

    assert pagecache.drop(step_dir) == 2

    size, cached = tree_bytes(step_dir)
    if cached >= size:
        pytest.skip("this file system keeps pages on POSIX_FADV_DONTNEED (e.g. tmpfs)")
    assert resident_bytes(cached_file) == 0
    assert cached_file.read_bytes() == before  # Dropping never changes a file.


def test_drop_leaves_remote_paths_and_platforms_without_fadvise_alone(tmp_path, monkeypatch):
    assert not pagecache.supported("gs://bucket/ckpt/8")
    assert pagecache.drop("gs://bucket/ckpt/8") == 0
    (tmp_path / "f").write_text("x")
    assert pagecache.drop(tmp_path) == 1
    monkeypatch.delattr(os, "posix_fadvise")
    assert pagecache.drop(tmp_path) == 0


def test_each_process_drops_its_own_files_and_process_0_the_shared_ones(tmp_path):
    files = [
        "_CHECKPOINT_METADATA",
        "podfit/data.json",
        "pytree/_METADATA",
        "pytree/d/root",
        "pytree/ocdbt.process_0/d/a",
        "pytree/ocdbt.process_1/d/b",
        "pytree/ocdbt.process_1/manifest.ocdbt",
    ]
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    assert pagecache.drop(tmp_path, 0) == 5
    assert pagecache.drop(tmp_path, 1) == 2
    assert pagecache.drop(tmp_path, 2) == 0


def test_drop_tries_every_file_then_raises_the_first_error(tmp_path, monkeypatch):
    for name in ("a", "b", "c"):
        (tmp_path / name).write_text("x")
    advised = []

    def fadvise(fd, offset, length, advice):
        advised.append(fd)
        if len(advised) == 1:
            raise OSError(5, "injected")

    monkeypatch.setattr(os, "posix_fadvise", fadvise)
    with pytest.raises(OSError, match="injected"):
        pagecache.drop(tmp_path)
    assert len(advised) == 3


def test_a_failed_drop_is_logged_and_the_write_commits(tmp_path, monkeypatch, caplog):
    def fail(step_dir, process_index=0):
        raise OSError(13, "injected", str(step_dir))

    monkeypatch.setattr(pagecache, "drop", fail)
    x, y = make_data()
    callback = checkpointing.OrbaxCheckpoint(tmp_path, save_freq=4, max_to_keep=None)
    with caplog.at_level("WARNING"):
        make_model().fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[callback])
    assert [info.step for info in checkpointing.list_steps(tmp_path)] == [4, 8]
    dropped = [r.getMessage() for r in caplog.records if "page cache" in r.getMessage()]
    assert len(dropped) == 1 and "injected" in dropped[0] and str(tmp_path / "4") in dropped[0]


def cached_fraction(directory, step) -> float:
    """The cached fraction of the step's array files (Orbax's small metadata
    files are not synced, so the kernel keeps their dirty pages)."""
    size, cached = tree_bytes(directory / str(step), min_size=64 << 10)
    assert size > (2 << 20)
    return cached / size


@pytest.mark.parametrize("drop", [True, False])
def test_each_write_first_drops_the_previous_step_from_the_page_cache(tmp_path, cached_file, drop):
    pagecache.drop(cached_file.parent)
    if resident_bytes(cached_file) > 0:
        pytest.skip("this file system keeps pages on POSIX_FADV_DONTNEED (e.g. tmpfs)")
    directory = tmp_path / "ckpt"
    x, y = make_data()
    model = make_model(units=32768)  # About 3 MiB of arrays per step with Adam's moments.

    def fit():
        callback = checkpointing.OrbaxCheckpoint(
            directory, save_freq=4, max_to_keep=None, drop_page_cache=drop
        )
        model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[callback])

    fit()  # Writes steps 4 and 8.
    assert [info.step for info in checkpointing.list_steps(directory)] == [4, 8]
    if drop:
        assert cached_fraction(directory, 4) < 0.05  # Dropped by the write of step 8.
    else:
        assert cached_fraction(directory, 4) > 0.5
    assert cached_fraction(directory, 8) > 0.5  # The latest step stays cached.

    fit()  # A new callback on the directory: writes 12 (dropping 8 first) and 16.
    assert [info.step for info in checkpointing.list_steps(directory)] == [4, 8, 12, 16]
    for step in (8, 12):
        assert (cached_fraction(directory, step) < 0.05) == drop, step
    assert cached_fraction(directory, 16) > 0.5
    # The steps are whole either way.
    assert checkpointing.restore_latest(directory, make_model(units=32768)).step == 16
