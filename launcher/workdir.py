"""The workdir, local or remote (gs://, s3://), and where per-process logs go.

Every path goes through `etils.epath`, so a bucket URL stays a URL (a
pathlib.Path would make `gs://b/run` the local folder `./gs:/b/run`).
"""

from __future__ import annotations

import os
import tempfile
import uuid

from etils import epath

from launcher.exits import usage_exit


class WorkdirError(Exception):
    """The workdir is missing or cannot be written: bad input, one line."""


def is_remote(workdir: epath.PathLike) -> bool:
    """Whether `workdir` is a URL of an object store (gs://, s3://, ...)."""
    return "://" in os.fspath(workdir)


def resolve(workdir: epath.PathLike) -> epath.Path:
    """`workdir` as an epath: absolute when local (Orbax wants that), URLs as given."""
    text = os.fspath(workdir)
    return epath.Path(text) if is_remote(text) else epath.Path(os.path.abspath(text))


def no_listing_cache() -> None:
    """Turns off fsspec's directory-listing cache for gs:// and s3:// (unless configured).

    gcsfs and s3fs keep each listing for the process' lifetime by default,
    so a process would not see steps, files or commits that other hosts
    wrote after it first listed a folder. Call before the first remote path
    is used.
    """
    from fsspec.config import conf  # noqa: PLC0415  (only remote workdirs need it)

    for protocol in ("gs", "gcs", "s3"):
        conf.setdefault(protocol, {}).setdefault("use_listings_cache", False)


def writable_or_exit(workdir: str | None) -> epath.Path:
    """`writable(workdir)`, or one line on stderr and exit 2 (bad input)."""
    try:
        return writable(workdir)
    except WorkdirError as e:
        usage_exit(str(e))


def writable(workdir: str | None) -> epath.Path:
    """Creates `workdir` if needed, then writes and deletes a small probe object in it.

    On an object store the probe is what tells a missing bucket or a missing
    permission before any process joins. The probe's name is unique, so
    hosts probing at once never meet. A remote workdir also turns off
    fsspec's listing cache (`no_listing_cache`).

    Raises:
        WorkdirError: `workdir` is unset or cannot be written.
    """
    if not workdir:
        raise WorkdirError("--workdir is required. Received: --workdir=None")
    path = resolve(workdir)
    if is_remote(workdir):
        no_listing_cache()
    try:
        if not is_remote(workdir):
            # Not on an object store: it has no folders, and gcsfs' mkdir
            # would create a missing bucket instead of reporting it.
            path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write_probe_{uuid.uuid4().hex}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        reason = e.strerror or f"{type(e).__name__}: {e}"  # gcsfs sets no strerror.
        raise WorkdirError(
            f"--workdir cannot be written ({reason}). Received: --workdir={workdir}"
        ) from e
    return path


def log_dir(workdir: str, logdir: str | None) -> str:
    """The local folder for per-process log files.

    `logdir` when given; else `<workdir>/logs` for a local workdir, and for a
    remote one `<tempdir>/podfit/<scheme>/<bucket>/<path>/logs` (e.g.
    `/tmp/podfit/gs/bucket/run1/logs`): log files are appended line by line,
    which object stores cannot do.
    """
    if logdir:
        return os.path.abspath(logdir)
    if not is_remote(workdir):
        return os.path.join(os.path.abspath(workdir), "logs")
    scheme, rest = os.fspath(workdir).split("://", 1)
    return os.path.join(tempfile.gettempdir(), "podfit", scheme, rest.strip("/"), "logs")
