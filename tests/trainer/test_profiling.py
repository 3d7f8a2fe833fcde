"""Which dispatches start and stop the trace, across epochs, accumulation and resumes."""

from types import SimpleNamespace

import numpy as np
import pytest

from trainer import profiling


@pytest.fixture
def calls(monkeypatch):
    """The profiler calls, in order, with the batch about to be dispatched."""
    log = []
    monkeypatch.setattr(profiling.jax.profiler, "start_trace", lambda d, **kw: log.append("start"))
    monkeypatch.setattr(profiling.jax.profiler, "stop_trace", lambda: log.append("stop"))
    return log


def _fit(callback, calls, *, batches_done, epochs, steps, stride=1, validation=True):
    """Dispatches like Keras' JAX fit; returns (event, global batch) pairs."""
    seen = []
    callback.set_model(
        SimpleNamespace(
            optimizer=SimpleNamespace(_iterations=np.int64(batches_done), iterations=None)
        )
    )
    callback.on_train_begin()
    batch_total = batches_done
    for epoch in range(epochs):
        callback.on_epoch_begin(epoch)
        for begin in range(0, steps, stride):
            before = len(calls)
            callback.on_train_batch_begin(begin)
            seen += [(c, batch_total + 1) for c in calls[before:]]
            batch_total += stride
        before = len(calls)
        if validation:
            callback.on_test_begin()
        callback.on_epoch_end(epoch)
        seen += [(c, f"end of epoch {epoch + 1}") for c in calls[before:]]
    before = len(calls)
    callback.on_train_end()
    seen += [(c, "end") for c in calls[before:]]
    return seen


def test_steps_span_an_epoch_and_stop_once_the_last_is_done(tmp_path, calls):
    p = profiling.Profile(tmp_path, start=6, stop=10)
    # Through the validation of epoch 1 (step 8 is not the last), stopped at step 11's dispatch.
    assert _fit(p, calls, batches_done=0, epochs=2, steps=8) == [("start", 6), ("stop", 11)]


def test_last_step_of_the_run_stops_before_validation(tmp_path, calls):
    p = profiling.Profile(tmp_path, start=7, stop=8)
    assert _fit(p, calls, batches_done=0, epochs=1, steps=8) == [
        ("start", 7),
        ("stop", "end of epoch 1"),
    ]


def test_accumulation_and_steps_per_execution(tmp_path, calls):
    # Optimizer steps 3-4 are batches 5-8; dispatches of 2 batches: 1, 3, 5, 7, 9.
    p = profiling.Profile(tmp_path, start=3, stop=4, steps_per_execution=2, accumulation=2)
    seen = _fit(p, calls, batches_done=0, epochs=1, steps=12, stride=2)
    assert seen == [("start", 5), ("stop", 9)]


def test_a_resumed_fit_counts_from_the_restored_step(tmp_path, calls):
    p = profiling.Profile(tmp_path, start=12, stop=12)
    assert _fit(p, calls, batches_done=10, epochs=1, steps=4) == [("start", 12), ("stop", 13)]
    # Once per run: a second fit does not trace again.
    assert _fit(p, calls, batches_done=0, epochs=1, steps=16) == []
    # A fit that ends within the range (preemption) ends the trace.
    p = profiling.Profile(tmp_path, start=2, stop=50)
    assert _fit(p, calls, batches_done=0, epochs=1, steps=4, validation=False) == [
        ("start", 2),
        ("stop", "end"),
    ]
