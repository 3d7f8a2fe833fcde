"""The progress lines of process 0: when they come, what they say, and the bar."""

import concurrent.futures
import io
import itertools
import logging
import random
import re
from types import SimpleNamespace

import numpy as np
import pytest

from checkpointing import events
from trainer import console
from trainer.progress import Progress

LINE = re.compile(
    r"step +(\d+)/(\d+) \( *(\d+)%\)  ([\d.]+) steps/s  ETA (\S+)  loss ([\d.]+)  checkpoint (\S+)"
)
TICK_S = 0.5  # The fake clock advances this much at each record passed.


def _progress(bar: bool, *, start_step: int = 0, total: int = 24, log_every: int = 4):
    ticks = itertools.count()
    progress = Progress(
        total_steps=total,
        log_every=log_every,
        enabled=True,
        epochs=2,
        bar=bar,
        clock=lambda: next(ticks) * TICK_S,
    )
    progress.set_model(SimpleNamespace(optimizer=SimpleNamespace(iterations=np.int64(start_step))))
    return progress


def _epochs(progress, epochs: int, batches: int, between=None):
    """Batch ends out of order from a thread pool, as Keras' async dispatch gives them."""
    pool = concurrent.futures.ThreadPoolExecutor(4)
    progress.on_train_begin()
    for epoch in range(epochs):
        progress.on_epoch_begin(epoch)
        order = list(range(batches))
        random.Random(epoch).shuffle(order)
        futures = [
            pool.submit(progress.on_train_batch_end, b, {"loss": 10.0 - epoch - b / 10})
            for b in order
        ]
        for f in futures:
            f.result()
        progress.on_epoch_end(epoch, {"loss": 1.0, "val_loss": 2.0})
        if between:
            between(epoch)
    progress.on_train_end()
    pool.shutdown()


def _console_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == console.LOGGER]


def test_a_line_every_log_every_steps_with_rate_eta_loss_and_checkpoint(caplog):
    caplog.set_level(logging.INFO, logger=console.LOGGER)
    progress = _progress(bar=False)

    def commit(epoch):  # Emitted from the checkpointing library's thread in a run.
        step = 12 * (epoch + 1)
        events.emit("save_blocked", step=step, ms=12.4)
        events.emit("save_committed", step=step, write_s=1.25, bytes=100)

    _epochs(progress, 2, 12, between=commit)
    lines = _console_lines(caplog)
    steps = [int(m[1]) for m in map(LINE.fullmatch, lines) if m]
    assert steps == [4, 8, 12, 16, 20, 24]
    for line in lines:
        match = LINE.fullmatch(line)
        if not match:
            continue
        step, total, percent, rate, eta, loss, checkpoint = match.groups()
        step, total = int(step), int(total)
        assert total == 24 and int(percent) == 100 * step // 24
        # Each epoch's rate counts from its first step's end: one tick per record passed
        # (the first batch, then every 4th), so step 4 of an epoch is 1 tick after step 1.
        in_epoch = (step - 1) % 12 + 1
        ticks = (in_epoch // 4) * TICK_S
        assert float(rate) == pytest.approx((in_epoch - 1) / ticks, abs=0.005)
        assert eta == console.duration((24 - step) / float(rate))
        assert float(loss) == pytest.approx(10.0 - (step - 1) // 12 - (in_epoch - 1) / 10, abs=1e-4)
        assert checkpoint == ("-" if step <= 12 else "12")
    assert "epoch 1/2 done at step 12: loss 1.0000 val_loss 2.0000" in lines
    assert "checkpoint step 12 committed (write 1.2 s, blocked 12 ms)" in lines
    assert "checkpoint step 24 committed (write 1.2 s, blocked 12 ms)" in lines
    assert progress.last_checkpoint == 24
    # Unsubscribed at the end of training: later events are not its business.
    events.emit("save_committed", step=99, write_s=1.0, bytes=1)
    assert progress.last_checkpoint == 24
    assert len(lines) == len(_console_lines(caplog))


def test_a_resumed_run_counts_from_its_step_and_not_primary_says_nothing(caplog):
    caplog.set_level(logging.INFO, logger=console.LOGGER)
    progress = _progress(bar=False, start_step=12)
    _epochs(progress, 1, 12)
    steps = [int(m[1]) for m in map(LINE.fullmatch, _console_lines(caplog)) if m]
    assert steps == [16, 20, 24]

    caplog.clear()
    quiet = Progress(total_steps=24, log_every=4, enabled=False, epochs=2, bar=False)
    _epochs(quiet, 1, 12)
    assert _console_lines(caplog) == []


def test_on_a_terminal_a_bar_rewritten_in_place(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger=console.LOGGER)
    out = io.StringIO()
    monkeypatch.setattr(console, "stream", lambda: out)
    progress = _progress(bar=True, total=12)
    _epochs(progress, 1, 12)
    text = out.getvalue()
    frames = [f for f in text.split("\r") if f]
    # Frames at most every 0.2 s of the fake clock (a tick is 0.5 s): every step here.
    assert len(frames) == 12 + 1  # The last step's frame, then the same text on its own line.
    assert frames[-1].endswith("\n") and text.count("\n") == 1
    assert all(f.startswith(console.CLEAR + "[") for f in frames)
    assert "] step 12/12 (100%)" in frames[-1] and "#" * 24 in frames[-1]
    # No console line per step on a terminal: only the epoch's.
    assert not [line for line in _console_lines(caplog) if LINE.fullmatch(line)]


@pytest.mark.parametrize(
    "seconds,text", [(0.4, "0s"), (42, "42s"), (187, "3m07s"), (7500, "2h05m")]
)
def test_durations_for_people(seconds, text):
    assert console.duration(seconds) == text


def test_progress_mode_from_the_environment(monkeypatch):
    monkeypatch.setenv(console.MODE_ENV, "bar")
    assert console.bar_mode()
    monkeypatch.setenv(console.MODE_ENV, "lines")
    assert not console.bar_mode()
    monkeypatch.setenv(console.MODE_ENV, "fancy")
    with pytest.raises(ValueError, match="PODFIT_PROGRESS=fancy"):
        console.bar_mode()
