"""Live progress on process 0: step / total, steps/s, ETA, loss, the last checkpoint.

On a terminal a bar rewritten in place at each step (at most a few times a
second); otherwise (pipes, log files, CI) one console line every
`log_every` steps. One console line per epoch and per committed checkpoint.
The logs Keras hands to `on_train_batch_end` are floats already, so nothing
here waits for the device (see `StepRecords`).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from checkpointing import events
from trainer import console
from trainer.callbacks import StepRecords

_BAR_WIDTH = 24
_FRAME_INTERVAL_S = 0.2  # Bar updates at most this often.


def progress_text(
    step: int,
    total: int,
    steps_per_s: float | None,
    loss: float | None,
    checkpoint: int | None,
    *,
    bar: bool = False,
) -> str:
    """One progress line: `step 10/240 (4%)  2.05 steps/s  ETA 1m52s  loss 3.7338  checkpoint -`."""
    width = len(str(total))
    percent = 100 * step // total if total else 100
    head = f"step {step:>{width}}/{total} ({percent:>3}%)"
    if bar:
        filled = _BAR_WIDTH * step // total if total else _BAR_WIDTH
        head = f"[{'#' * filled}{'.' * (_BAR_WIDTH - filled)}] {head}"
    parts = [head]
    if steps_per_s:
        parts.append(f"{steps_per_s:.2f} steps/s")
        parts.append(f"ETA {console.duration((total - step) / steps_per_s)}")
    if loss is not None and math.isfinite(loss):
        parts.append(f"loss {loss:.4f}")
    elif loss is not None:
        parts.append(f"loss {loss}")
    parts.append(f"checkpoint {'-' if checkpoint is None else checkpoint}")
    return "  ".join(parts)


class Progress(StepRecords):
    """The progress line (or bar) and the per-checkpoint lines, on process 0.

    Subscribes to `checkpointing.events` between `on_train_begin` and
    `on_train_end`: put it after the checkpoint callback, whose
    `on_train_end` commits the last save. steps/s counts from the end of
    each epoch's first step (compilation and validation are left out).
    """

    def __init__(
        self,
        *,
        total_steps: int,
        log_every: int,
        enabled: bool,
        epochs: int,
        steps_per_execution: int = 1,
        accumulation: int = 1,
        bar: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        super().__init__(
            log_every=log_every,
            enabled=enabled,
            steps_per_execution=steps_per_execution,
            accumulation=accumulation,
        )
        self._total = total_steps
        self._epochs = epochs
        self._bar = console.bar_mode() if (bar is None and enabled) else bool(bar)
        self._clock = clock
        self._origin: tuple[int, float] | None = None  # (step, time) at the epoch's first step.
        self._last_frame = -math.inf
        self._last_text = ""
        self._checkpoint: int | None = None
        self._blocked_ms: dict[int, float] = {}
        self._events_lock = threading.Lock()
        self._unsubscribe: Callable[[], None] | None = None

    @property
    def last_checkpoint(self) -> int | None:
        """The last step committed while this callback listened (None: none)."""
        return self._checkpoint

    # Checkpoint events (the emitting thread: training thread or background writer).

    def _on_event(self, kind: str, fields: dict) -> None:
        if kind == "save_blocked":
            with self._events_lock:
                self._blocked_ms[int(fields["step"])] = float(fields["ms"])
        elif kind == "save_committed":
            step = int(fields["step"])
            with self._events_lock:
                blocked = self._blocked_ms.pop(step, None)
                self._checkpoint = step
            detail = f"write {float(fields['write_s']):.1f} s"
            if blocked is not None:
                detail += f", blocked {blocked:.0f} ms"
            console.info("checkpoint step %d committed (%s)", step, detail)

    # Keras hooks.

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self._enabled and self._unsubscribe is None:
            self._unsubscribe = events.subscribe(self._on_event)

    def on_train_end(self, logs=None):
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._bar and self._last_text:
            console.end_bar(self._last_text)
            self._last_text = ""

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        self._origin = None

    def _wants(self, batch: int) -> bool:
        # The epoch's first batch end starts the rate; the bar shows every step.
        return self._bar or batch < self._stride or not (batch + 1) % self._log_every

    def _emit(self, record: dict, batch: int) -> None:
        now, step = self._clock(), record["step"]
        if self._origin is None:
            self._origin = (step, now)
        first_step, first_time = self._origin
        rate = (step - first_step) / (now - first_time) if now > first_time else None
        text = progress_text(
            step, self._total, rate, record.get("loss"), self._checkpoint, bar=self._bar
        )
        if self._bar:
            self._last_text = text
            if now - self._last_frame >= _FRAME_INTERVAL_S or step >= self._total:
                self._last_frame = now
                console.show_bar(text)
        elif not (batch + 1) % self._log_every:
            console.info("%s", text)

    def _emit_epoch(self, record: dict) -> None:
        hidden = ("epoch", "step", "learning_rate")
        shown = " ".join(f"{k} {v:.4f}" for k, v in record.items() if k not in hidden)
        console.info(
            "epoch %d/%d done at step %d: %s", record["epoch"], self._epochs, record["step"], shown
        )
