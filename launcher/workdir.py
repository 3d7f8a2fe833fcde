"""The workdir must be writable before any device work (local or `gs://`)."""

from __future__ import annotations

import uuid

from etils import epath

from launcher.exits import usage_exit


def writable(workdir: str | None) -> epath.Path:
    """Creates `workdir` if needed and writes and deletes a probe object in it.

    Goes through etils.epath, so `gs://bucket/run` is probed in the bucket
    (object stores have no directories: `mkdir` creates nothing there, the
    probe object proves the write permission). Exits 2 with one line if it
    cannot be written.
    """
    if not workdir:
        usage_exit("--workdir is required. Received: --workdir=None")
    path = epath.Path(workdir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        # Unique per process: every host of a pod probes the same workdir.
        probe = path / f".write_probe_{uuid.uuid4().hex}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        reason = e.strerror or str(e) or type(e).__name__
        usage_exit(f"--workdir cannot be written ({reason}). Received: --workdir={workdir}")
    return path
