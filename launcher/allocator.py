"""Host allocator setting of the training process: keep freed buffers for reuse.

glibc's malloc serves every request above 32 MiB (at most; the threshold
starts at 128 KiB) with a fresh `mmap` and gives it back with `munmap` when
freed, so every large host buffer (a restored array, a snapshot, the copies
TensorStore and JAX make while saving or loading) is page-faulted in anew,
one 4 KiB page at a time. On the virtual machines this project is measured
on, that costs more than the copy itself: a fresh 733 MiB copy took 1.2-1.7 s
where a copy into reused memory took 0.04 s, and a restore of 733 MiB took
0.9-1.0 s against 0.4-0.55 s with freed memory kept (docs/benchmarks.md).

`keep_freed_memory()` asks glibc (`mallopt`) to serve requests below 1 GiB
from its heap and not to give freed memory back to the operating system, so
buffers of the same sizes are reused from step to step and save to save.
It also keeps every thread on the one main heap (one arena): a thread's own
arena holds at most 64 MiB, so the large buffers that TensorStore's and
XLA's threads allocate (the arrays a restore reads into) were fresh mappings
every time, whatever the threshold. The
process' resident memory then stays at its peak instead of shrinking between
saves. The same idea as running JAX with TCMalloc, which MaxText and JAX's
TPU guides recommend, without a preloaded library.

Set `PODFIT_KEEP_FREED_MEMORY=0` to leave the allocator as it is. Other C
libraries (macOS, musl) are left alone.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

ENV = "PODFIT_KEEP_FREED_MEMORY"

# mallopt(3) parameters.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_MMAP_THRESHOLD = 1 << 30  # Requests from 1 GiB up still get their own mapping.
_TRIM_THRESHOLD = (1 << 31) - 1  # The largest value mallopt takes: in effect, never trim.


def keep_freed_memory() -> str:
    """Applies the setting to this process; returns what happened, in words.

    Call it early (before large buffers exist); it affects later allocations
    only. Never raises: the setting is an optimization.
    """
    if os.environ.get(ENV, "1") == "0":
        return f"allocator unchanged ({ENV}=0)"
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return "allocator unchanged (not glibc)"
    try:
        mallopt = ctypes.CDLL(None).mallopt
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) == 1
        ok = mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1 and ok
        ok = mallopt(_M_ARENA_MAX, 1) == 1 and ok
    except (OSError, AttributeError) as e:
        return f"allocator unchanged (mallopt unavailable: {e})"
    if not ok:
        return "allocator unchanged (mallopt refused the setting)"
    return "allocator keeps freed memory (glibc mmap threshold 1 GiB, no trimming, one arena)"
