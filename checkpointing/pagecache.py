"""Dropping a committed step's files from this machine's page cache.

A step is read back only by a restore, usually in a later process, yet
writing it leaves every byte of it cached. The next save's write then needs
as much memory again for its own pages. Dropping the previous step's pages
(`posix_fadvise(..., POSIX_FADV_DONTNEED)`, which discards clean cached pages
and leaves the files untouched) right before the next write lets that write
reuse the memory just freed.

Right before, not after the previous commit: on the virtual machines the
benchmarks run on, memory left free for a second or two is handed back to the
host (free page reporting), and touching it again then costs a fault on the
host for every page. Measured there with a 183 MiB write + fsync into a new
file (median of 5, `docs/benchmarks.md`): 84 ms right after the previous
file's pages were freed, 84 ms one second after, 372 ms two seconds after,
489 ms three seconds after, and 490-550 ms with the previous file still
cached. On a machine whose free memory is plainly there, dropping changes
little beyond keeping the page cache for other files.
"""

from __future__ import annotations

import os

from absl import logging
from etils import epath

from checkpointing.layout import process_dir_owner, writer_of


def supported(path: epath.PathLike) -> bool:
    """Whether `drop` does anything for `path`: a local path on a platform with fadvise."""
    return hasattr(os, "posix_fadvise") and "://" not in str(path)


def drop(step_dir: epath.PathLike, process_index: int = 0) -> int:
    """Asks the kernel to drop the cached pages of the files under `step_dir`.

    Each process drops what it wrote: its own `ocdbt.process_<i>` directories
    (Orbax's per-process array files); process 0 also every file outside
    them (the metadata it writes). So on a shared file system no host opens
    the other hosts' files. Dirty pages are not dropped: the kernel starts
    writing them back and keeps them (Orbax's small metadata files are not
    synced; TensorStore's array files are). The files are not changed. Files
    that vanish meanwhile (retention deleting the step) are skipped.

    Args:
        step_dir: A committed step directory (local paths only; others are
            left alone).
        process_index: This process' `jax.process_index()`.

    Returns:
        How many files were dropped.

    Raises:
        OSError: The first error opening or advising a file, once every
            other file was tried (the step itself is unaffected).
    """
    if not supported(step_dir):
        return 0
    dropped, first_error = 0, None
    top = str(step_dir)
    for root, dirs, names in os.walk(top):
        # Other processes' directories are theirs to drop.
        dirs[:] = [d for d in dirs if process_dir_owner(d) in (None, process_index)]
        # Shared files (outside every ocdbt.process_<i>): process 0 drops them.
        if writer_of(os.path.relpath(root, top)) != process_index:
            continue
        for name in names:
            try:
                fd = os.open(os.path.join(root, name), os.O_RDONLY)
            except FileNotFoundError:
                continue  # Deleted meanwhile: nothing left to drop.
            except OSError as e:
                first_error = first_error or e
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                dropped += 1
            except OSError as e:
                first_error = first_error or e
            finally:
                os.close(fd)
    logging.debug("checkpointing: dropped %d files of %s from the page cache", dropped, step_dir)
    if first_error is not None:
        raise first_error
    return dropped


def drop_or_warn(step_dir: epath.PathLike, process_index: int = 0) -> None:
    """`drop`, with a failure logged as an absl warning instead of raised.

    For the writer: only page-cache memory is at stake, the step is whole,
    and the write that follows goes on.
    """
    try:
        drop(step_dir, process_index)
    except OSError as e:
        logging.warning("checkpointing: could not drop %s from the page cache: %r", step_dir, e)
