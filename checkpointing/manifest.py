"""Checksums of a committed step: written after the commit, checked before a restore.

Each committed step of a directory written by `OrbaxCheckpoint` carries
`<step>/podfit/manifest.json`:

```
{"format": 1, "step": 8, "algorithm": "crc32",
 "files": {"pytree/d/6c47...": {"size": 2715, "crc32": "1a2b3c4d"}, ...}}
```

one entry per file of the step (relative path, size in bytes, zlib CRC-32 of
the contents), the manifest itself excepted. Once every process has
committed, each process checksums the files it wrote (`checksums`: its own
`ocdbt.process_<i>` array shards; process 0 also the shared metadata), so the
work per process stays flat in the process count at fixed bytes per
process; process 0 gathers the entries and writes the manifest
(`write_shared`), to a temporary name renamed into place, so a manifest is
either whole or absent.

`verify(path)` re-reads the step and returns a `Verdict`:

- "ok": every listed file is there with its size and checksum;
- "damaged": a file is missing, truncated or changed (or the manifest does
  not parse); `problems` names each file, expected vs found;
- "unverified": there is no manifest (the writer died between the commit and
  the manifest, or the step was written by stock Keras). Usable, but unchecked.

A read that fails (`OSError`: a transient error of the file system or the
object store) is retried with backoff and, if it persists, raised: it is
not damage, and a step is never given up because it could not be read.

With several processes, `verify(path, part=(i, n))` checks one of n shares of
the files, balanced by size, and `merge` combines the n verdicts into the one
every process acts on (`verify_shared` does both, on every process).

Files present but not listed (e.g. added by hand) are not damage.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import zlib
from typing import Literal

from absl import logging
from etils import epath

from checkpointing.coordination import Coordinator
from checkpointing.layout import process_dir_owner, writer_of
from checkpointing.retry import retried

MANIFEST_DIR = "podfit"  # = layout.RECORD; the podfit checkpointable's directory.
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
_TMP_SUFFIX = ".tmp"
_CHUNK = 1 << 20

Status = Literal["ok", "damaged", "unverified"]


class CheckpointCorruptError(ValueError):
    """A step failed verification against its manifest (or none verified)."""


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The result of `verify` for one step.

    Attributes:
        step: The global step (the directory's name), if known.
        status: "ok", "damaged" or "unverified".
        problems: For "damaged", one line per bad file (path, expected vs
            found); for "unverified", why.
        files: How many files were checked.
    """

    step: int | None
    status: Status
    problems: tuple[str, ...] = ()
    files: int = 0

    @property
    def usable(self) -> bool:
        """Whether a restore may read the step ("ok" or "unverified")."""
        return self.status != "damaged"

    def to_json(self) -> str:
        """The verdict as JSON (to send it to the other processes)."""
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Verdict:
        """The inverse of `to_json`."""
        raw = json.loads(text)
        return cls(raw["step"], raw["status"], tuple(raw["problems"]), int(raw["files"]))

    def describe(self) -> str:
        """One line, e.g. `damaged: pytree/d/ab12: size 2715 expected, 100 found`."""
        if self.status == "ok":
            return f"ok ({self.files} files)"
        return f"{self.status}: {'; '.join(self.problems)}"


def manifest_path(step_dir: epath.PathLike) -> epath.Path:
    """Where the manifest of the step directory `step_dir` lives."""
    return epath.Path(step_dir) / MANIFEST_DIR / MANIFEST_NAME


def _step_of(step_dir: epath.Path) -> int | None:
    try:
        return int(step_dir.name)
    except ValueError:
        return None


def _files(step_dir: epath.Path, process_index: int | None = None) -> list[str]:
    """Relative paths of the files under `step_dir`, the manifest excepted.

    With `process_index`, only the files that process wrote (`writer_of`);
    other processes' `ocdbt.process_<i>` directories are not even listed.
    """
    skip = {
        f"{MANIFEST_DIR}/{MANIFEST_NAME}",
        f"{MANIFEST_DIR}/{MANIFEST_NAME}{_TMP_SUFFIX}",
    }
    out = []
    pending = [step_dir]
    while pending:
        current = pending.pop()
        for child in current.iterdir():
            if child.is_dir():
                owner = process_dir_owner(child.name)
                if process_index is None or owner in (None, process_index):
                    pending.append(child)
                continue
            relative = str(child.relative_to(step_dir))
            if relative in skip:
                continue
            if process_index is None or writer_of(relative) == process_index:
                out.append(relative)
    return sorted(out)


def checksum(path: epath.PathLike) -> tuple[int, str]:
    """(size in bytes, CRC-32 as 8 hex digits) of one file, streamed."""
    crc, size = 0, 0
    with epath.Path(path).open("rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
    return size, f"{crc & 0xFFFFFFFF:08x}"


def checksums(step_dir: epath.PathLike, process_index: int | None = None) -> dict[str, dict]:
    """Manifest entries, `{relative path: {"size": n, "crc32": "..."}}`.

    Args:
        step_dir: A committed step directory.
        process_index: Only the files this process wrote (see `writer_of`);
            None for every file of the step.

    Raises:
        OSError: If a file cannot be read.
    """
    step_dir = epath.Path(step_dir)
    files = {}
    for relative in _files(step_dir, process_index):
        size, crc = checksum(step_dir / relative)
        files[relative] = {"size": size, "crc32": crc}
    return files


def write(step_dir: epath.PathLike, files: dict[str, dict] | None = None) -> epath.Path:
    """Writes the manifest of a committed step (once, on one process).

    Args:
        step_dir: The committed step directory.
        files: The entries, gathered from every process's `checksums`; None
            checksums every file here.

    Returns:
        The manifest's path.

    Raises:
        OSError: If the files cannot be read or the manifest written (e.g. disk
            full); the step then stays committed and reads as "unverified".
    """
    step_dir = epath.Path(step_dir)
    if files is None:
        files = checksums(step_dir)
    document = {
        "format": MANIFEST_FORMAT,
        "step": _step_of(step_dir),
        "algorithm": "crc32",
        "files": files,
    }
    target = manifest_path(step_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(document, indent=1, sort_keys=True)
    if "://" in os.fspath(step_dir):
        # An object store (gs://) writes an object whole or not at all, and
        # has no rename: gcsfs would copy and delete.
        target.write_text(text)
        return target
    tmp = target.parent / (MANIFEST_NAME + _TMP_SUFFIX)
    tmp.write_text(text)
    tmp.rename(target)  # Atomic on POSIX file systems: whole or absent.
    return target


def write_shared(step_dir: epath.PathLike, step: int, coordinator: Coordinator) -> int:
    """Every process checksums the files it wrote; process 0 writes the manifest.

    Call it on every process once all have committed the step. The time
    each process took is logged at INFO level.

    Returns:
        The bytes of the files this process wrote.

    Raises:
        OSError: If a file cannot be read or the manifest written.
        PeerFailedError, TimeoutError: From gathering the entries (process 0).
    """
    start = time.monotonic()
    mine = checksums(step_dir, coordinator.process_index)
    parts = coordinator.gather("manifest", step, json.dumps(mine))
    if coordinator.process_index == 0:
        write(step_dir, {k: v for part in parts for k, v in json.loads(part).items()})
    nbytes = sum(entry["size"] for entry in mine.values())
    logging.info(
        "checkpointing: manifest of %s: this process checksummed %d files, %d bytes, in %.3fs",
        step_dir,
        len(mine),
        nbytes,
        time.monotonic() - start,
    )
    return nbytes


def share_of(sizes: dict[str, int], part: tuple[int, int]) -> list[str]:
    """The files of share `part = (i, n)`: n shares balanced by bytes.

    Largest files first, each to the share with the fewest bytes so far (ties:
    the lowest share). Every process computes the same split from the same
    manifest; the shares are disjoint and cover every file.
    """
    index, count = part
    if not 0 <= index < count:
        raise ValueError(f"part must be (i, n) with 0 <= i < n. Received: part={part}")
    loads = [0] * count
    mine = []
    for name in sorted(sizes, key=lambda n: (-sizes[n], n)):
        share = loads.index(min(loads))
        loads[share] += sizes[name]
        if share == index:
            mine.append(name)
    return sorted(mine)


def _problem(step_dir: epath.Path, name: str, size: int, crc: str) -> str | None:
    """What is wrong with one listed file, or None (raises OSError if unreadable)."""
    path = step_dir / name
    missing = f"{name}: missing (expected {size} bytes, crc32 {crc})"
    if not path.exists():
        return missing
    try:
        found_size = path.stat().length
        if found_size != size:
            return f"{name}: size {size} bytes expected, {found_size} found"
        _, found_crc = checksum(path)
    except FileNotFoundError:
        return missing
    if found_crc != crc:
        return f"{name}: crc32 {crc} expected, {found_crc} found"
    return None


def verify(step_dir: epath.PathLike, part: tuple[int, int] = (0, 1)) -> Verdict:
    """Checks a step directory against its manifest (see the module doc).

    Sizes are compared first; checksums are computed only for files whose size
    matches. Damage is a verdict, not an error: a file missing, of another
    size or checksum, or a manifest that does not parse. A read that fails
    (`OSError`) is retried with backoff (`retried`) and then raised: a
    transient error is not damage.

    Args:
        step_dir: A committed step directory.
        part: `(i, n)`: check only share i of n of the files (`share_of`);
            `merge` the n verdicts. The default checks every file.

    Raises:
        OSError: If the manifest or a file stays unreadable.
    """
    step_dir = epath.Path(step_dir)
    step = _step_of(step_dir)
    target = manifest_path(step_dir)
    try:
        text = retried(target, lambda: target.read_text() if target.exists() else None)
    except FileNotFoundError:
        text = None
    if text is None:
        return Verdict(step, "unverified", (f"no manifest ({MANIFEST_DIR}/{MANIFEST_NAME})",))
    try:
        listed = json.loads(text)["files"]
        if not isinstance(listed, dict):
            raise TypeError(f"files is a {type(listed).__name__}")
        entries = {name: (int(e["size"]), str(e["crc32"])) for name, e in listed.items()}
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        return Verdict(
            step, "damaged", (f"{MANIFEST_DIR}/{MANIFEST_NAME}: unreadable manifest ({e!r})",)
        )
    mine = share_of({name: size for name, (size, _) in entries.items()}, part)
    problems = []
    for name in mine:
        size, crc = entries[name]
        problem = retried(
            step_dir / name, lambda n=name, s=size, c=crc: _problem(step_dir, n, s, c)
        )
        if problem is not None:
            problems.append(problem)
    if problems:
        return Verdict(step, "damaged", tuple(problems), len(mine))
    return Verdict(step, "ok", (), len(mine))


def merge(verdicts: list[Verdict]) -> Verdict:
    """One verdict from the verdicts of the shares of one step (`verify(part=...)`).

    Damaged if any share is; else unverified if any is; else ok. Problems are
    listed once each, in share order; `files` is the total checked.
    """
    if not verdicts:
        raise ValueError("merge needs at least one verdict. Received: verdicts=[]")
    for status in ("damaged", "unverified"):
        matching = [v for v in verdicts if v.status == status]
        if matching:
            problems = tuple(dict.fromkeys(p for v in matching for p in v.problems))
            break
    else:
        status, problems = "ok", ()
    return Verdict(verdicts[0].step, status, problems, sum(v.files for v in verdicts))


def verify_shared(step_dir: epath.PathLike, step: int, coordinator: Coordinator) -> Verdict:
    """The step checked against its manifest, a share of the files per process.

    Call it on every process: each checks one share (`share_of`), process 0
    gathers the verdicts, merges them and shares the merged one (O(1)
    coordination calls per process). A share whose check raises (a read
    error that outlasted its retries) is sent as an error, and every process
    raises: an unreadable step is not damage.

    Raises:
        OSError: If a share could not be read (on every process; the original
            error on the process that met it).
        RuntimeError: If a share's check failed otherwise.
    """
    part = (coordinator.process_index, coordinator.process_count)
    failure = None
    try:
        entry = verify(step_dir, part if coordinator.multiprocess else (0, 1)).to_json()
    except Exception as e:  # noqa: BLE001 - sent to every process, then raised below.
        failure = e
        entry = json.dumps({"error": f"process {part[0]}: {e!r}", "os": isinstance(e, OSError)})
    parts = [json.loads(p) for p in coordinator.gather("verify", step, entry)]  # [] unless 0.
    merged = ""
    if coordinator.process_index == 0:
        errors = [p for p in parts if "error" in p]
        if errors:
            merged = json.dumps(
                {"error": "; ".join(p["error"] for p in errors), "os": all(p["os"] for p in errors)}
            )
        else:
            merged = merge([Verdict.from_json(json.dumps(p)) for p in parts]).to_json()
    shared = json.loads(coordinator.share("verdict", step, merged))
    if "error" in shared:
        if failure is not None:
            raise failure
        kind = OSError if shared["os"] else RuntimeError
        raise kind(f"verifying step {step} of {step_dir} failed: {shared['error']}")
    return Verdict.from_json(json.dumps(shared))


def report(verdict: Verdict, step_dir: epath.PathLike) -> None:
    """Logs a verdict: an error per damaged file, a warning if unverified."""
    if verdict.status == "damaged":
        for problem in verdict.problems:
            logging.error(
                "checkpointing: step %s in %s is DAMAGED: %s", verdict.step, step_dir, problem
            )
    elif verdict.status == "unverified":
        logging.warning(
            "checkpointing: step %s in %s is unverified (%s); restoring it unchecked",
            verdict.step,
            step_dir,
            "; ".join(verdict.problems),
        )
