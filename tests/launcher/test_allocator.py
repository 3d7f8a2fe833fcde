"""launcher/allocator.py: glibc keeps freed buffers; opt-out by environment."""

import platform
import subprocess
import sys

import pytest

from tests.helpers import REPO, env

PROBE = (
    "from launcher import allocator; print(allocator.keep_freed_memory())\n"
    # A 64 MiB buffer written, freed, allocated and written again: kept memory
    # is reused without page faults; a fresh mapping faults in every page.
    "import ctypes, resource; libc = ctypes.CDLL(None)\n"
    "libc.malloc.restype = ctypes.c_void_p; libc.free.argtypes = [ctypes.c_void_p]\n"
    "n = 64 << 20; a = libc.malloc(n); ctypes.memset(a, 1, n); libc.free(a)\n"
    "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
    "b = libc.malloc(n); ctypes.memset(b, 1, n)\n"
    "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
    # The same with 128 MiB on another thread (a thread's own arena holds at
    # most 64 MiB, so without the one-arena setting it gets a fresh mapping).
    "import threading; out = []\n"
    "def run():\n"
    "    n = 128 << 20; a = libc.malloc(n); ctypes.memset(a, 1, n); libc.free(a)\n"
    "    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt\n"
    "    b = libc.malloc(n); ctypes.memset(b, 1, n)\n"
    "    out.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)\n"
    "t = threading.Thread(target=run); t.start(); t.join(); print(out[0])\n"
)


def _probe(**extra) -> list[str]:
    r = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=REPO,
        env={**env(), **extra},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


@pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_keeps_freed_memory_on_glibc():
    status, faults, thread_faults = _probe()
    assert status.startswith("allocator keeps freed memory"), status
    assert int(faults) < 1000  # 64 MiB of fresh 4 KiB pages would be 16384 faults.
    assert int(thread_faults) < 1000  # 128 MiB: 32768.


def test_opt_out_leaves_the_allocator_alone():
    status, faults, thread_faults = _probe(PODFIT_KEEP_FREED_MEMORY="0")
    assert status == "allocator unchanged (PODFIT_KEEP_FREED_MEMORY=0)"
    if sys.platform == "linux" and platform.libc_ver()[0] == "glibc":
        assert int(faults) > 8000  # glibc's default: a fresh mapping, faulted in again.
        assert int(thread_faults) > 16000
