"""What the checkpointing library and the trainer's StepEvents emit (checkpointing.events)."""

import threading
import time

import pytest

import checkpointing
from checkpointing import events
from tests.checkpointing.common import make_data, make_model
from trainer.callbacks import StepEvents
from trainer.data import DataWait

BATCH = 16  # 128 samples: 8 steps per epoch.


@pytest.fixture
def emitted():
    """Every event emitted while the test runs, with the emitting thread's name."""
    got = []
    lock = threading.Lock()

    def listener(kind, fields):
        with lock:
            got.append((kind, dict(fields), threading.current_thread().name))

    unsubscribe = events.subscribe(listener)
    yield got
    unsubscribe()


def test_saves_commits_and_the_restore_are_emitted(tmp_path, emitted):
    x, y = make_data()
    callback = checkpointing.OrbaxCheckpoint(tmp_path, save_freq=4, max_to_keep=None)
    make_model().fit(
        x,
        y,
        batch_size=BATCH,
        epochs=2,
        verbose=0,
        callbacks=[callback, StepEvents(log_every=3)],
    )
    ended = time.time()
    kinds = [kind for kind, _, _ in emitted]
    by_kind = {}
    for kind, fields, thread in emitted:
        by_kind.setdefault(kind, []).append((fields, thread))
    assert [f["step"] for f, _ in by_kind["save_begun"]] == [4, 8, 12, 16]
    assert [f["step"] for f, _ in by_kind["save_blocked"]] == [4, 8, 12, 16]
    assert all(f["ms"] >= 0 for f, _ in by_kind["save_blocked"])
    committed = by_kind["save_committed"]
    assert sorted(f["step"] for f, _ in committed) == [4, 8, 12, 16]
    assert all(f["bytes"] > 0 and f["write_s"] > 0 for f, _ in committed)
    assert {thread for _, thread in committed} == {"podfit-ckpt-writer"}
    # The last save was in flight at the end of fit: the wait for it is reported.
    assert [f["step"] for f, _ in by_kind.get("save_waited", [])] in ([], [16])
    # StepEvents: one fit from step 0, the first step, then every 3 steps and the last.
    assert [f["step"] for f, _ in by_kind["fit_begun"]] == [0]
    assert [f["step"] for f, _ in by_kind["compiled"]] == [1]
    assert [f["step"] for f, _ in by_kind["step"]] == [3, 6, 9, 12, 15, 16]
    # Each with the time its batch end ran (Keras' thread pool: not always in order).
    begun = by_kind["fit_begun"][0][0]["time"]
    assert all(begun < f["time"] <= ended for f, _ in by_kind["step"])
    assert kinds.index("save_begun") < kinds.index("save_blocked")

    emitted.clear()
    restored = checkpointing.restore_latest(tmp_path, make_model())
    assert [(k, f["step"]) for k, f, _ in emitted] == [("restore", 16)]
    assert emitted[0][1]["seconds"] > 0 and restored.step == 16


def test_step_events_count_steps_across_fits(emitted):
    # Two fit calls on one callback, as in a run resumed mid-epoch.
    x, y = make_data()
    model = make_model()
    wait = DataWait()
    wait.add(1.5)  # numpy data here: the trainer's grain pipeline adds to it.
    step_events = StepEvents(log_every=2, data_wait=wait)
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[step_events])
    model.fit(x, y, batch_size=BATCH, epochs=2, initial_epoch=1, verbose=0, callbacks=[step_events])
    got = [(k, f["step"]) for k, f, _ in emitted]
    assert got == [
        ("fit_begun", 0),
        ("compiled", 1),  # Once per process, not per fit.
        *[("step", s) for s in (2, 4, 6, 8)],
        ("fit_begun", 8),
        *[("step", s) for s in (10, 12, 14, 16)],
    ]
    carried = [f.get("data_wait_s") for k, f, _ in emitted if k in ("compiled", "step")]
    assert carried == [1.5] * 9


def test_a_listener_that_raises_is_removed_logged_and_listed_and_the_save_commits(
    tmp_path, emitted, caplog
):
    calls = []

    def broken(kind, fields):
        calls.append(kind)
        raise OSError(28, "No space left on device (injected)")

    before = len(events.failures())
    events.subscribe(broken)
    model = make_model()
    x, y = make_data(128)
    callback = checkpointing.OrbaxCheckpoint(tmp_path / "ckpt", save_freq=4, max_to_keep=5)
    model.fit(x, y, batch_size=BATCH, epochs=1, callbacks=[callback], verbose=0)

    assert calls == ["save_begun"]  # Called once, then removed.
    (failure,) = events.failures()[before:]
    assert "broken failed on event 'save_begun'" in failure and "No space left" in failure
    assert "No space left on device (injected)" in caplog.text
    # The other listeners went on hearing every save, and every save committed.
    committed = [f["step"] for kind, f, _ in emitted if kind == "save_committed"]
    assert committed == [4, 8]
    assert [i.step for i in checkpointing.list_steps(tmp_path / "ckpt")] == [4, 8]
