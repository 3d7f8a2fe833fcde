"""What the checkpointing library reports while it works, for whoever listens.

A listener is a callable `listener(kind, fields)`; `fields` is a dict of
plain values (ints, floats, strings) that always holds `time` (seconds since
the epoch, `time.time()`); a listener knows its own process. Listeners are
called synchronously in the emitting thread, which may be the training
thread, Keras' thread pool or the background writer, so they must be quick
and thread-safe.

A listener that raises is removed, and its error logged (absl error, with
the traceback) and kept (`failures()`, which the launcher's summary shows):
reporting is not training, and an error raised into the emitter would stop
one process alone in the middle of a save or a step while the others wait
for it at the next barrier, or turn a committed step into a failed write.

Kinds emitted by this package (each with the fields listed):

- `save_begun`: step (training thread, once the save is decided).
- `save_blocked`: step, ms (time the training thread waited for this save:
  the wait for the previous save's write (queue depth 1), the snapshot and
  the hand-off; with `save_on_background=False`, the whole write). Emitted
  when the training thread goes on, so the wait is [time - ms, time].
- `save_committed`: step, write_s (from the save's start to its commit on
  every process, including the manifest), bytes (the bytes this process
  wrote). Emitted on the writer thread.
- `save_waited`: step, ms (the training thread waited at the end of `fit`
  for the write of `step`, in flight, to be durable; only when one was in
  flight). Emitted when the wait ends, so the wait is [time - ms, time].
- `restore`: step, seconds (the read into the model, including the verdict;
  once per `restore` or `restore_latest` call that restored a step).

Other packages (the trainer, the launcher) emit their own kinds through
the same `emit`: see `launcher/events.py` for the run's event log.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from absl import logging

Listener = Callable[[str, dict[str, Any]], None]

_lock = threading.Lock()
_listeners: list[Listener] = []
_failures: list[str] = []


def subscribe(listener: Listener) -> Callable[[], None]:
    """Adds `listener`; returns a function that removes it again."""
    with _lock:
        _listeners.append(listener)

    def unsubscribe() -> None:
        with _lock:
            if listener in _listeners:
                _listeners.remove(listener)

    return unsubscribe


def emit(kind: str, **fields: Any) -> None:
    """Calls every listener with `kind` and `fields` (plus `time`)."""
    with _lock:
        listeners = list(_listeners)
    if not listeners:
        return
    record = {"time": time.time(), **fields}
    for listener in listeners:
        try:
            listener(kind, record)
        except Exception as e:  # noqa: BLE001 - logged, kept, and the listener removed.
            _fail(listener, kind, e)


def _fail(listener: Listener, kind: str, error: Exception) -> None:
    name = getattr(listener, "__qualname__", type(listener).__qualname__)
    message = f"{name} failed on event {kind!r} and stopped listening: {error!r}"
    logging.exception("events: %s", message)
    with _lock:
        if listener in _listeners:
            _listeners.remove(listener)
        _failures.append(message)


def failures() -> list[str]:
    """The listeners that raised (one line each), in order; [] if none did."""
    with _lock:
        return list(_failures)
