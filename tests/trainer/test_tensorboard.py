"""TensorBoard event files: steps in order from concurrent batch ends, checkpoint events, gs://."""

import concurrent.futures
import random
from types import SimpleNamespace

import numpy as np
import pytest
from etils import epath
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from checkpointing import events
from tests.gcs_emulator import BUCKET, gcs  # noqa: F401  (the fixture)
from trainer.profiling import copy_tree
from trainer.tensorboard import EventFile, TensorBoardLogger


def scalars(directory) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of the event files in a local run folder."""
    accumulator = EventAccumulator(str(directory))
    accumulator.Reload()
    return {
        tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }


def _fit(logger, iterations, order, epochs, pool):
    logger.set_model(SimpleNamespace(optimizer=SimpleNamespace(iterations=np.int64(iterations))))
    logger.on_train_begin()
    for epoch in epochs:
        logger.on_epoch_begin(epoch)
        futures = [
            pool.submit(
                logger.on_train_batch_end,
                b,
                {"loss": float(epoch * 10 + b), "learning_rate": 0.5},
            )
            for b in order
        ]
        for f in futures:
            f.result()
        logger.on_epoch_end(epoch, {"loss": -1.0 - epoch, "val_loss": -2.0 - epoch})


def test_steps_in_order_epochs_in_two_runs_and_checkpoint_events(tmp_path):
    logger = TensorBoardLogger(tmp_path, log_every=2, global_batch_size=8, tokens_per_example=4)
    # A restore comes before fit: heard, written once the files are open.
    events.emit("restore", step=10, seconds=1.5)
    order = list(range(10))
    random.Random(0).shuffle(order)
    pool = concurrent.futures.ThreadPoolExecutor(4)
    logger.set_model(SimpleNamespace(optimizer=SimpleNamespace(iterations=np.int64(10))))
    logger.on_train_begin()
    for epoch in range(2):
        logger.on_epoch_begin(epoch)
        futures = [
            pool.submit(
                logger.on_train_batch_end,
                b,
                {"loss": float(epoch * 10 + b), "learning_rate": 0.5, "note": "not a number"},
            )
            for b in order
        ]
        for f in futures:
            f.result()
        # From the background writer's thread, as the checkpointing package does.
        pool.submit(events.emit, "save_blocked", step=20 + 10 * epoch, ms=12.5).result()
        events.emit("save_committed", step=20 + 10 * epoch, write_s=0.25, bytes=4096)
        events.emit("save_begun", step=20 + 10 * epoch)  # No tag of its own.
        logger.on_epoch_end(epoch, {"loss": -1.0 - epoch, "val_loss": -2.0 - epoch})
    logger.on_train_end()
    events.emit("save_blocked", step=99, ms=1.0)  # After the end: not heard.
    pool.shutdown()

    train, validation = scalars(tmp_path / "train"), scalars(tmp_path / "validation")
    steps = [12, 14, 16, 18, 20, 22, 24, 26, 28, 30]
    assert train["batch_loss"] == [(s, float(s - 11)) for s in steps]
    assert train["batch_learning_rate"] == [(s, 0.5) for s in steps]
    assert train["epoch_loss"] == [(20, -1.0), (30, -2.0)]
    assert validation == {"epoch_loss": [(20, -2.0), (30, -3.0)]}
    assert train["checkpoint/restore_s"] == [(10, 1.5)]
    assert train["checkpoint/blocked_ms"] == [(20, 12.5), (30, 12.5)]
    assert train["checkpoint/write_s"] == [(20, 0.25), (30, 0.25)]
    assert train["checkpoint/bytes"] == [(20, 4096.0), (30, 4096.0)]
    assert train["checkpoint/committed_step"] == [(20, 20.0), (30, 30.0)]
    # Not the first interval of the fit (compilation), nor across the epoch's end
    # (the second epoch's first interval starts at its beginning).
    perf_steps = [14, 16, 18, 20, 22, 24, 26, 28, 30]
    times = dict(train["perf/step_time_s"])
    assert sorted(times) == perf_steps and all(t > 0 for t in times.values())
    for step, rate in train["perf/examples_per_s"]:
        assert rate == pytest.approx(8 / times[step], rel=1e-5)
    for step, rate in train["perf/tokens_per_s"]:
        assert rate == pytest.approx(8 * 4 / times[step], rel=1e-5)

    # A second fit writes a second file; the event after the end was not kept for it.
    pool = concurrent.futures.ThreadPoolExecutor(2)
    _fit(logger, 30, [0, 1], [3], pool)
    logger.on_train_end()
    pool.shutdown()
    train = scalars(tmp_path / "train")
    assert train["batch_loss"][-1] == (32, 31.0)
    assert 99 not in [s for s, _ in train["checkpoint/blocked_ms"]]
    assert len(list((tmp_path / "train").iterdir())) == 2


def test_accumulation_and_steps_per_execution_count_optimizer_steps(tmp_path):
    logger = TensorBoardLogger(
        tmp_path, log_every=4, global_batch_size=2, steps_per_execution=2, accumulation=2
    )
    pool = concurrent.futures.ThreadPoolExecutor(2)
    # Keras calls batch ends with the last batch of each execution: 1, 3, 5, 7.
    _fit(logger, 0, [3, 1, 7, 5], [0, 1], pool)
    logger.on_train_end()
    pool.shutdown()
    train = scalars(tmp_path / "train")
    assert [s for s, _ in train["batch_loss"]] == [2, 4, 6, 8]
    assert train["epoch_loss"] == [(4, -1.0), (8, -2.0)]
    # 4 batches of 2 examples make 2 optimizer steps.
    (step, seconds), *_ = train["perf/step_time_s"]
    assert step == 4 and dict(train["perf/examples_per_s"])[4] == pytest.approx(
        4 * 2 / (2 * seconds), rel=1e-5
    )


def test_gs_event_file_is_copied_at_each_flush_and_reads_back(gcs, tmp_path):  # noqa: F811
    url = epath.Path(f"gs://{BUCKET}/tb/train")
    file = EventFile(url, flush_s=3600)
    file.scalars(1, {"batch_loss": 2.0})
    file.maybe_flush()
    assert not url.exists() or not list(url.iterdir())  # Not before a flush.
    file.flush()
    file.scalars(2, {"batch_loss": 1.0})
    file.close()
    (remote,) = list(url.iterdir())
    assert remote.name.startswith("events.out.tfevents.")
    local = tmp_path / "train"
    local.mkdir()
    (local / remote.name).write_bytes(remote.read_bytes())
    assert scalars(local) == {"batch_loss": [(1, 2.0), (2, 1.0)]}

    # The profile's copy: a local tree to a URL, paths kept.
    tree = tmp_path / "tree"
    (tree / "plugins" / "profile" / "run").mkdir(parents=True)
    (tree / "plugins" / "profile" / "run" / "host.xplane.pb").write_bytes(b"x" * 10)
    copied = copy_tree(str(tree), epath.Path(f"gs://{BUCKET}/profile/process_0"))
    target = epath.Path(f"gs://{BUCKET}/profile/process_0/plugins/profile/run/host.xplane.pb")
    assert copied == [target] and target.read_bytes() == b"x" * 10
