"""The run's event log: what every process did and when, across every launch of a workdir.

Every process appends one JSON line per event to
`<workdir>/events/<launch>/process_<i>.jsonl`: one folder per launch of the
workdir, one file per process. `<launch>` is process 0's start time
(`20261201T104233.123Z`), which every process learns from it through the
coordination service once joined (one share: O(1) calls per process), so
folders sort by launch order. Each line is `{"kind": ..., "time": <seconds
since the epoch>, <fields>}`; `python -m launcher.report` reads them.

Kinds (besides the checkpointing library's, see `checkpointing/events.py`:
save_begun, save_blocked, save_committed, save_waited, restore):

- `start`: pid, host (the launcher's first line of Python; written once joined).
- `joined`: process_index, process_count, launch (after `jax.distributed.initialize`).
- `fit_begun`: step (each `fit` call begins; the trainer's preparation is done).
- `compiled`: step (the first training step of the launch has run: tracing and
  compilation included).
- `step`: step (every `trainer.log_every` optimizer steps, and the last step
  of each `fit`; from Keras' thread pool, when the step's logs are ready).
  `compiled` and `step` carry data_wait_s: the seconds this launch's training
  thread has waited for batches so far (`trainer.data.DataWait`).
- `eval_begun`, `eval_done`: step (validation inside `fit`).
- `preempted`: step (training stopped at an agreed step after a SIGTERM).
- `failed`: error (an exception ended training).
- `end`: code (the exit code the launcher leaves with).

Locally each line is appended and flushed at once, so a process killed
outright (SIGKILL, a lost host) loses no recorded event. An object store
(gs://) cannot append: `trainer.records.JsonLines` rewrites the object at most
every 30 s, and at `preempted`, `failed` and `end`; a kill loses at most the
last 30 s there.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any

from etils import epath

from checkpointing import events
from launcher import workdir as workdir_lib
from trainer.records import JsonLines

# Kinds after which a remote file is rewritten at once: the process is leaving.
_FLUSH_KINDS = ("preempted", "failed", "end")


def launch_name(start_time: float) -> str:
    """A sortable launch id from a start time: `YYYYmmddTHHMMSS.mmmZ` (UTC)."""
    whole = int(start_time)
    millis = int(round((start_time - whole) * 1000)) % 1000
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(whole)) + f".{millis:03d}Z"


class Recorder:
    """A `checkpointing.events` listener that writes every event of this process.

    Events before `open` (the start, a SIGTERM while joining) are kept in
    memory and written once the file is known. Thread-safe: the checkpoint
    writer thread and Keras' thread pool emit too.
    """

    def __init__(self, start_time: float):
        self._lock = threading.Lock()
        self._sink: JsonLines | None = None
        self._pending: list[dict] = [
            {"kind": "start", "time": start_time, "pid": os.getpid(), "host": socket.gethostname()}
        ]
        self.start_time = start_time

    def __call__(self, kind: str, fields: dict[str, Any]) -> None:
        record = {"kind": kind, **fields}
        with self._lock:
            if self._sink is None:
                self._pending.append(record)
                return
            self._sink.write(record)
            if kind in _FLUSH_KINDS:
                self._sink.flush()

    def open(self, workdir: epath.PathLike, launch: str, process_index: int) -> epath.Path:
        """Starts writing to `<workdir>/events/<launch>/process_<process_index>.jsonl`."""
        folder = epath.Path(workdir) / "events" / launch
        if not workdir_lib.is_remote(folder):
            folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"process_{process_index}.jsonl"
        with self._lock:
            self._sink = JsonLines(path)
            for record in self._pending:
                self._sink.write(record)
            self._pending = []
        return path

    def flush(self) -> None:
        with self._lock:
            if self._sink is not None:
                self._sink.flush()


def agreed_launch(start_time: float, timeout_s: float = 300.0) -> str:
    """Process 0's launch id on every process (one share through the coordination service)."""
    import jax  # noqa: PLC0415  (after the JAX configuration)

    from checkpointing.coordination import Coordinator  # noqa: PLC0415

    coordinator = Coordinator(jax.process_index(), jax.process_count(), "podfit/events", timeout_s)
    return coordinator.share("launch", 0, launch_name(start_time))


def record(start_time: float) -> Recorder:
    """A `Recorder` subscribed to `checkpointing.events` (for the process' lifetime)."""
    recorder = Recorder(start_time)
    events.subscribe(recorder)
    return recorder


def joined(recorder: Recorder, workdir: epath.PathLike, timeout_s: float = 300.0) -> str:
    """After joining: agrees on the launch, opens this process' file, emits `joined`.

    Returns:
        The launch id.
    """
    import jax  # noqa: PLC0415

    joined_at = time.time()  # Before the share's round trip.
    launch = agreed_launch(recorder.start_time, timeout_s)
    recorder.open(workdir, launch, jax.process_index())
    events.emit(
        "joined",
        time=joined_at,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        launch=launch,
    )
    return launch
