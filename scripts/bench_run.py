"""One measured `fit` per variant, restores, and raw disk reads and writes.

Raw disk figures are what the checkpoint figures are compared with: the same
number of bytes written with write + fsync (as `dd conv=fsync` does), and read
back after the file's pages were dropped from the page cache.
"""

from __future__ import annotations

import os
import shutil
import statistics
import time

import keras
import numpy as np
from bench_core import DirWatcher, TimedCallback, block_until_ready, tree_bytes
from bench_variants import Variant

_CHUNK = 64 * 2**20


def _median(values):
    return statistics.median(values) if values else None


def _mean(values):
    return statistics.fmean(values) if values else None


def run_fit(
    variant: Variant,
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    *,
    steps: int,
    save_freq: int,
    batch_size: int,
    directory: str,
) -> dict:
    """Runs one epoch of `steps` batches with the variant's callback; returns raw figures.

    Returns:
        A dict of plain values: fit seconds, per-save blocked seconds, saves
        started and landed, per-save write seconds (where they can be seen),
        seconds from `fit` returning until the last save was durable, the
        `on_train_end` seconds, step periods away from saves and checkpoint bytes.
    """
    os.makedirs(directory, exist_ok=True)
    counter = [0]
    inner = None
    probe = None
    if variant.make is not None:
        inner = variant.make(directory, save_freq, steps // save_freq + 2)
        if variant.save_method is not None:
            original = getattr(inner, variant.save_method)

            def counted(*args, **kwargs):
                counter[0] += 1
                return original(*args, **kwargs)

            setattr(inner, variant.save_method, counted)
            probe = lambda: counter[0]  # noqa: E731
        elif variant.save_marker is not None:
            probe = lambda: getattr(inner, variant.save_marker, None)  # noqa: E731
    # Every fit counts global steps from 0, so that callbacks which save at
    # multiples of the global step (podfit) and those which count the batches
    # of this fit (Keras) save on the same batches, the last one included.
    model.optimizer.iterations.assign(0)
    timed = TimedCallback(inner, probe, save_freq)
    watcher = DirWatcher(directory).start() if variant.watched else None
    n = steps * batch_size
    start = time.perf_counter()
    model.fit(
        x[:n], y[:n], batch_size=batch_size, epochs=1, shuffle=False, verbose=0, callbacks=[timed]
    )
    fit_end = time.perf_counter()
    block_until_ready(model)

    batch_calls = [c for c in timed.calls if c.hook == "on_train_batch_end"]
    save_calls = [c for c in timed.calls if c.saved]
    train_end = next((c.seconds for c in timed.calls if c.hook == "on_train_end"), 0.0)
    # The period of batch k: from the end of batch k-1's callbacks to the end of k's.
    periods = [
        b.end - a.end for a, b in zip(batch_calls, batch_calls[1:], strict=False) if not b.saved
    ]

    commits: list[float] = []
    if watcher is not None:
        watcher.settle()
        watcher.stop()
        commits = sorted(watcher.first_seen.values())
        landed = len(commits)
    else:
        landed = len(save_calls)

    writes: list[float] = []
    if not variant.background:
        writes = [c.seconds for c in save_calls]
    elif commits and len(commits) == len(save_calls):
        writes = [t - c.start for c, t in zip(save_calls, commits, strict=True)]
    entries = [os.path.join(directory, e) for e in os.listdir(directory)]
    entries = [e for e in entries if DirWatcher.committed(os.path.basename(e))] or entries
    ckpt_bytes = max((tree_bytes(e) for e in entries), default=0)
    return {
        "steps": steps,
        "save_freq": save_freq,
        "fit_s": fit_end - start,
        "saves_started": len(save_calls),
        "saves_landed": landed,
        "blocked_s": [c.seconds for c in save_calls],
        "write_s": writes,
        "train_end_s": train_end,
        "durable_after_fit_s": max(0.0, commits[-1] - fit_end) if commits else 0.0,
        "step_period_median_s": _median(periods),
        "step_period_mean_s": _mean(periods),
        "ckpt_bytes": ckpt_bytes,
        # Seconds between consecutive commits: one write's time when writes queue up.
        "commit_gap_s": _median([b - a for a, b in zip(commits, commits[1:], strict=False)]),
    }


# --------------------------------------------------------------------------- raw disk


def drop_cache(path: str) -> None:
    """Flushes the files under `path` and asks the kernel to drop their cached pages."""
    files = (
        [path]
        if os.path.isfile(path)
        else [os.path.join(root, f) for root, _, names in os.walk(path) for f in names]
    )
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


class RawDisk:
    """dd-style raw writes and reads of a given number of bytes in `directory`."""

    def __init__(self, directory: str, seed: int = 0):
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.path = os.path.join(directory, "raw.bin")
        self._block = np.random.default_rng(seed).integers(0, 256, _CHUNK, dtype=np.uint8)
        self._new: list[str] = []

    def _write(self, path: str, nbytes: int) -> float:
        view = memoryview(self._block)
        start = time.perf_counter()
        with open(path, "wb", buffering=0) as f:
            left = nbytes
            while left > 0:
                left -= f.write(view[: min(left, _CHUNK)])
            os.fsync(f.fileno())
        return time.perf_counter() - start

    def write(self, nbytes: int) -> float:
        """Seconds to write `nbytes` over the same file (truncated) and fsync them."""
        return self._write(self.path, nbytes)

    def write_new(self, nbytes: int) -> float:
        """Seconds to write `nbytes` into a new file and fsync them, as a checkpoint does.

        The previous such file is deleted after the write (as retention
        deletes the oldest step after a commit), outside the timed part.
        """
        path = os.path.join(self.directory, f"raw_new_{len(self._new)}.bin")
        seconds = self._write(path, nbytes)
        self._new.append(path)
        if len(self._new) > 1:
            os.remove(self._new[-2])
        return seconds

    def read(self, nbytes: int) -> float:
        """Seconds to read the file written last (cold) into memory allocated beforehand."""
        drop_cache(self.path)
        buf = bytearray(nbytes)  # Allocated and zeroed outside the timed part.
        view = memoryview(buf)
        start = time.perf_counter()
        with open(self.path, "rb", buffering=0) as f:
            got = 0
            while got < nbytes:
                n = f.readinto(view[got : got + _CHUNK])
                if not n:
                    break
                got += n
        return time.perf_counter() - start

    def remove(self) -> None:
        for path in [self.path, *self._new[-1:]]:
            if os.path.exists(path):
                os.remove(path)


def tensorstore_floor(directory: str, scratch: str) -> dict | None:
    """TensorStore alone on the arrays of podfit's latest step in `directory`: the format's floor.

    Any writer of the Orbax format (which `keras.saving.load_model` and
    `load_weights` read) goes through TensorStore, so these two figures bound
    what a checkpoint callback can reach on this machine:

    - read: every array of the step's `pytree` read cold with plain
      `tensorstore.open(...).read()` (no Orbax, no model, no verification);
    - write: the same arrays written with the same zarr3 metadata into a new
      OCDBT store on the same disk, in one atomic transaction (as Orbax
      writes a step; TensorStore fsyncs its files), with no training running,
      after the read's pages were dropped from the page cache (as podfit drops
      each committed step's, `checkpointing/pagecache.py`): the write reuses
      that memory, the best case on a machine where memory the kernel has not
      used lately is slow to touch.

    Returns:
        {"bytes", "read_s", "write_s"}, or None if `directory` holds no
        committed step.
    """
    import tensorstore as ts

    from checkpointing import layout  # Only podfit's steps are measured here.

    steps = layout.committed_steps(directory)
    if not steps:
        return None
    pytree = os.fspath(steps[-1].path / layout.PYTREE)
    base = {"driver": "file", "path": pytree + "/"}
    kv = ts.KvStore.open({"driver": "ocdbt", "base": base}).result()
    names = sorted(
        k.decode().removesuffix("/zarr.json")
        for k in kv.list().result()
        if k.endswith(b"/zarr.json")
    )

    def spec(root: dict, name: str, **extra) -> dict:
        kvstore = {"driver": "ocdbt", "base": root, "path": name + "/"}
        return {"driver": "zarr3", "kvstore": kvstore, **extra}

    drop_cache(pytree)
    start = time.perf_counter()
    # One context per store set, as Orbax does: the arrays share one OCDBT
    # database handle (separate handles would contend for its manifest).
    context = ts.Context()
    stores = [f.result() for f in [ts.open(spec(base, n), context=context) for n in names]]
    arrays = [f.result() for f in [s.read() for s in stores]]
    read_s = time.perf_counter() - start

    out = os.path.join(scratch, "tensorstore_floor")
    shutil.rmtree(out, ignore_errors=True)
    drop_cache(pytree)
    target = {"driver": "file", "path": out + "/"}
    metadata = [s.spec().to_json()["metadata"] for s in stores]
    write_context = ts.Context()
    start = time.perf_counter()
    # One atomic transaction for all arrays, as Orbax writes a step's OCDBT store.
    txn = ts.Transaction(atomic=True)
    opened = [
        ts.open(spec(target, n, metadata=m), create=True, context=write_context, transaction=txn)
        for n, m in zip(names, metadata, strict=True)
    ]
    for f, a in zip(opened, arrays, strict=True):
        f.result().write(a).result()  # Staged in the transaction.
    txn.commit_async().result()
    write_s = time.perf_counter() - start
    shutil.rmtree(out, ignore_errors=True)
    return {"bytes": sum(a.nbytes for a in arrays), "read_s": read_s, "write_s": write_s}


def measure_restore(variant: Variant, directory: str, model: keras.Model) -> float:
    """Seconds to restore the latest checkpoint in `directory` into `model`, cold cache."""
    drop_cache(directory)
    start = time.perf_counter()
    variant.restore(directory, model)
    block_until_ready(model)
    return time.perf_counter() - start
