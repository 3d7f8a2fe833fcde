"""TensorBoard event files without TensorFlow (tensorboardX), written by process 0.

Two run folders under `<workdir>/tensorboard/`, the way TensorBoard compares
training and validation curves (the tags of Keras' own TensorBoard callback):

- `train/`: `batch_<metric>` every `trainer.log_every` batches (the steps and
  values of metrics.jsonl: `batch_loss`, `batch_learning_rate`, the model's
  metrics), `epoch_<metric>` at each epoch's end (`epoch_loss`,
  `epoch_learning_rate`, ...), the throughput (`perf/step_time_s`,
  `perf/examples_per_s`, and `perf/tokens_per_s` for token data) and the
  checkpoint events of `checkpointing.events` (`checkpoint/blocked_ms`,
  `checkpoint/write_s`, `checkpoint/bytes`, `checkpoint/committed_step`,
  `checkpoint/restore_s`).
- `validation/`: `epoch_<metric>` at each epoch's end (Keras' `val_loss` is
  `epoch_loss` there, next to the training `epoch_loss`).

The x axis is the optimizer step (metrics.jsonl's `step`, the checkpoints'
step). Each `fit` call writes a new event file in each folder.

A workdir in an object store (gs://) cannot append: the event file is
written in a local temporary folder and copied whole to the workdir through
etils.epath (tensorboardX's own gs:// writer needs google-cloud-storage and
flushes from a thread whose errors nobody sees). Local event files are
flushed every `LOCAL_FLUSH_S`, remote ones copied every
`records.REMOTE_FLUSH_S`, both at every epoch's end and at the end of `fit`.
Events are written synchronously (tensorboardX's EventsWriter, not its
queue and thread), so a failed write raises in the thread that wrote.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import threading
import time
from typing import Any

from etils import epath
from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto import event_pb2, summary_pb2

from checkpointing import events
from trainer.callbacks import StepRecords
from trainer.records import REMOTE_FLUSH_S, is_remote

# How often, at most, a local event file is flushed for a running TensorBoard.
LOCAL_FLUSH_S = 5.0
TRAIN, VALIDATION = "train", "validation"
# checkpointing.events kinds -> (field, tag) pairs written at the event's step.
CHECKPOINT_TAGS = {
    "save_blocked": (("ms", "checkpoint/blocked_ms"),),
    "save_committed": (
        ("write_s", "checkpoint/write_s"),
        ("bytes", "checkpoint/bytes"),
        ("step", "checkpoint/committed_step"),
    ),
    "restore": (("seconds", "checkpoint/restore_s"),),
}
# Event files of one process get distinct names even when opened within a second.
_files = itertools.count()


class EventFile:
    """One run folder's event file, at `directory` (local or a URL).

    Thread-safe: `scalars` and `flush` may be called from any thread.
    """

    def __init__(self, directory: epath.PathLike, *, flush_s: float | None = None):
        self._target = epath.Path(directory)
        self._remote = is_remote(directory)
        self._flush_s = (
            flush_s if flush_s is not None else (REMOTE_FLUSH_S if self._remote else LOCAL_FLUSH_S)
        )
        if self._remote:
            self._local = tempfile.mkdtemp(prefix="podfit_tensorboard_")
        else:
            self._target.mkdir(parents=True, exist_ok=True)
            self._local = os.fspath(self._target)
        self._lock = threading.Lock()  # The writer and the file's bytes.
        self._flush_lock = threading.Lock()  # Copies in order, one at a time.
        self._writer = EventsWriter(
            os.path.join(self._local, "events"), f".{os.getpid()}.{next(_files)}"
        )
        # A remote file's local copy: the one file of its temporary folder.
        self._name = os.listdir(self._local)[0] if self._remote else None
        self._flushed_at = time.monotonic()
        self._closed = False

    def scalars(self, step: int, values: dict[str, float], wall_time: float | None = None) -> None:
        """Writes `values` (tag -> number) as one event at `step`."""
        if not values:
            return
        summary = summary_pb2.Summary(
            value=[
                summary_pb2.Summary.Value(tag=tag, simple_value=float(v))
                for tag, v in values.items()
            ]
        )
        event = event_pb2.Event(
            wall_time=time.time() if wall_time is None else wall_time,
            step=int(step),
            summary=summary,
        )
        with self._lock:
            self._writer.write_event(event)

    def maybe_flush(self) -> None:
        """Flushes when `flush_s` seconds have passed since the last flush."""
        if time.monotonic() - self._flushed_at >= self._flush_s:
            self.flush()

    def flush(self) -> None:
        """Makes every event written so far visible in the run folder."""
        with self._flush_lock:
            with self._lock:
                self._writer.flush()
                data = None
                if self._remote:
                    with open(os.path.join(self._local, self._name), "rb") as f:
                        data = f.read()
            self._flushed_at = time.monotonic()
            if data is not None:
                (self._target / self._name).write_bytes(data)

    def close(self) -> None:
        if self._closed:
            return
        self.flush()
        with self._lock:
            self._writer.close()
            self._closed = True
        if self._remote:
            shutil.rmtree(self._local, ignore_errors=True)


class TensorBoardLogger(StepRecords):
    """Writes the run's scalars to `<directory>/train` and `<directory>/validation`.

    Built on process 0 only. It listens to `checkpointing.events` from its
    construction (a run's restore comes before `fit`) until the end of each
    `fit` (again from the start of the next); events heard while no `fit`
    runs are written when the next one starts.

    Throughput is measured on the host between two metric records of an
    epoch (the time each is emitted, in step order): `perf/step_time_s`
    (seconds per optimizer step), `perf/examples_per_s` (batches x
    `global_batch_size` per second) and, with `tokens_per_example`,
    `perf/tokens_per_s`. The first interval of a `fit` (it holds the
    compilation) and intervals across an epoch's end (validation, saves)
    are not measured. No device sync: the logs are floats already.
    """

    def __init__(
        self,
        directory: epath.PathLike,
        *,
        log_every: int,
        global_batch_size: int,
        tokens_per_example: int | None = None,
        steps_per_execution: int = 1,
        accumulation: int = 1,
        flush_s: float | None = None,
    ):
        super().__init__(
            log_every=log_every,
            enabled=True,
            steps_per_execution=steps_per_execution,
            accumulation=accumulation,
        )
        self._directory = epath.Path(directory)
        self._batch = global_batch_size
        self._tokens = tokens_per_example
        self._flush_s = flush_s
        self._files: dict[str, EventFile] = {}
        self._heard: list[tuple[str, dict]] = []  # Events while no file is open.
        self._events_lock = threading.Lock()
        self._mark: tuple[float, int] | None = None  # (time, batches) of the last record.
        self._first_epoch = True
        self._unsubscribe = events.subscribe(self._on_event)

    def _record(self, batches: int, logs) -> dict:
        return {**super()._record(batches, logs), "batches": batches}

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        files = {
            run: EventFile(self._directory / run, flush_s=self._flush_s)
            for run in (TRAIN, VALIDATION)
        }
        with self._events_lock:
            self._files = files
            for kind, fields in self._heard:
                self._write_event(files[TRAIN], kind, fields)
            self._heard = []
        if self._unsubscribe is None:
            self._unsubscribe = events.subscribe(self._on_event)
        self._mark, self._first_epoch = None, True

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        # After the first epoch of a fit: the epoch's first interval is measured.
        self._mark = None if self._first_epoch else (time.monotonic(), self._epoch_start)

    def _emit(self, record: dict, batch: int) -> None:
        now = time.monotonic()
        step, batches = record["step"], record["batches"]
        values = {f"batch_{k}": v for k, v in record.items() if k not in ("step", "batches")}
        if self._mark is not None and batches > self._mark[1] and now > self._mark[0]:
            seconds, count = now - self._mark[0], batches - self._mark[1]
            examples_per_s = count * self._batch / seconds
            values["perf/step_time_s"] = seconds * self._accumulation / count
            values["perf/examples_per_s"] = examples_per_s
            if self._tokens:
                values["perf/tokens_per_s"] = examples_per_s * self._tokens
        self._mark = (now, batches)
        train = self._files[TRAIN]
        train.scalars(step, values)
        train.maybe_flush()

    def _emit_epoch(self, record: dict) -> None:
        step = record["step"]
        metrics = {k: v for k, v in record.items() if k not in ("epoch", "step")}
        self._files[TRAIN].scalars(
            step, {f"epoch_{k}": v for k, v in metrics.items() if not k.startswith("val_")}
        )
        self._files[VALIDATION].scalars(
            step, {f"epoch_{k[4:]}": v for k, v in metrics.items() if k.startswith("val_")}
        )
        for file in self._files.values():
            file.flush()
        self._first_epoch = False

    def _on_event(self, kind: str, fields: dict[str, Any]) -> None:
        if kind not in CHECKPOINT_TAGS:
            return
        with self._events_lock:  # Not while the files are swapped.
            if self._files:
                self._write_event(self._files[TRAIN], kind, fields)
            else:
                self._heard.append((kind, dict(fields)))

    @staticmethod
    def _write_event(file: EventFile, kind: str, fields: dict[str, Any]) -> None:
        values = {tag: fields[name] for name, tag in CHECKPOINT_TAGS[kind] if name in fields}
        file.scalars(fields["step"], values, wall_time=fields.get("time"))

    def on_train_end(self, logs=None):
        # After the checkpoint callback's end (it comes earlier in the list):
        # the final save's events are in.
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        with self._events_lock:
            files, self._files = self._files, {}
        for file in files.values():
            file.close()
