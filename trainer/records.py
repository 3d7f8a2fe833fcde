"""A JSON-lines file that may live in an object store (gs://), which has no append."""

from __future__ import annotations

import json
import os
import time

from etils import epath

# How often, at most, a remote file is rewritten with the lines it gained.
REMOTE_FLUSH_S = 30.0


def is_remote(path: epath.PathLike) -> bool:
    """Whether `path` is a URL of an object store (gs://, s3://, ...): no appends, no local files."""
    return "://" in os.fspath(path)


class JsonLines:
    """One JSON object per line, appended to `path`.

    Local paths get each line appended at once, as a log file would. An
    object store cannot append, so for a URL (gs://...) the lines are kept in
    memory and the whole object is rewritten: at most every `flush_s` seconds
    on `write`, and on every `flush()` (the trainer flushes at each epoch's
    end, which Keras reaches on preemption too). The object's earlier lines
    (a resumed run's) are read once and kept, so readers see the same file in
    both places. A process killed outright (SIGKILL, a lost host) loses the
    lines of its last `flush_s` seconds at most; those after the last
    checkpoint are logged again by the resumed run.

    Example:
        sink = JsonLines("gs://bucket/run/metrics.jsonl")
        sink.write({"step": 1, "loss": 2.5})
        sink.flush()
    """

    def __init__(self, path: epath.PathLike, *, flush_s: float = REMOTE_FLUSH_S):
        self._path = epath.Path(path)
        self._remote = is_remote(path)
        self._flush_s = flush_s
        self._text = ""
        self._dirty = False
        self._flushed_at = time.monotonic()
        if self._remote and self._path.exists():
            self._text = self._path.read_text()
            if self._text and not self._text.endswith("\n"):
                self._text += "\n"

    def write(self, record: dict) -> None:
        line = json.dumps(record) + "\n"
        if not self._remote:
            with self._path.open("a") as f:
                f.write(line)
            return
        self._text += line
        self._dirty = True
        if time.monotonic() - self._flushed_at >= self._flush_s:
            self.flush()

    def flush(self) -> None:
        """Makes every line written so far visible at `path`."""
        if self._dirty:
            self._path.write_text(self._text)
            self._dirty = False
        self._flushed_at = time.monotonic()
