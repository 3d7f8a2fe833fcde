"""The sequence of global batches is a pure function of (seed, global step)."""

import time

import numpy as np
import pytest
from absl import flags

from configs import lm, mlp
from trainer import data
from trainer.mesh import DataShard


class _Indices:
    def __len__(self):
        return 50

    def __getitem__(self, i):
        return np.int64(i)


def _global_batch(records, step, *, processes, seed=7, global_batch=8):
    """Concatenates every process' block of global batch `step`."""
    blocks = []
    for p in range(processes):
        ds = data.global_batches(
            records, seed=seed, global_batch_size=global_batch, shard=DataShard(p, processes)
        )
        blocks.append(np.asarray(ds[step]))
    return np.concatenate(blocks)


@pytest.mark.parametrize("step", [0, 1, 5, 6, 7, 30])
def test_global_batches_identical_for_1_2_4_processes(step):
    records = _Indices()
    one = _global_batch(records, step, processes=1)
    assert len(set(one.tolist())) == 8
    for processes in (2, 4):
        np.testing.assert_array_equal(_global_batch(records, step, processes=processes), one)


def test_each_pass_is_a_new_permutation_covering_every_record():
    records = _Indices()
    ds = data.global_batches(records, seed=7, global_batch_size=10, shard=DataShard(0, 1))
    first = np.concatenate([ds[s] for s in range(5)])
    second = np.concatenate([ds[s] for s in range(5, 10)])
    assert sorted(first.tolist()) == list(range(50)) == sorted(second.tolist())
    assert first.tolist() != second.tolist()


def test_seed_changes_order_and_resume_offset_does_not():
    records = _Indices()
    a = data.global_batches(records, seed=1, global_batch_size=8, shard=DataShard(0, 1))
    b = data.global_batches(records, seed=2, global_batch_size=8, shard=DataShard(0, 1))
    assert a[0].tolist() != b[0].tolist()
    resumed = data.train_dataset(
        records, seed=1, global_batch_size=8, shard=DataShard(0, 1), start_step=13, num_steps=4
    )
    assert [r.tolist() for r in resumed] == [a[s].tolist() for s in range(13, 17)]


def test_lm_records_are_next_byte_pairs():
    config = lm.get_config("tiny")
    splits = data.load_splits(config.data)
    x, y = splits.train[3]
    assert x.shape == y.shape == (config.data.kwargs.seq_len,)
    np.testing.assert_array_equal(x[1:], y[:-1])
    assert len(splits.validation) > 0


def test_digits_split_and_validation_batches_repeat():
    config = mlp.get_config()
    splits = data.load_splits(config.data)
    assert len(splits.train) + len(splits.validation) == 1797
    val = data.validation_dataset(
        splits.validation, global_batch_size=16, shard=DataShard(1, 2), num_steps=3
    )
    assert len(val) == 3
    np.testing.assert_array_equal(list(val)[0][1], list(val)[0][1])
    with pytest.raises(ValueError, match="trainer.validation_steps"):
        data.validation_dataset(
            splits.validation, global_batch_size=16, shard=DataShard(0, 2), num_steps=999
        )


def _position(**changes):
    config = mlp.get_config("tiny")
    for key, value in changes.items():
        if key.startswith("kwargs."):
            config.data.kwargs[key[7:]] = value
        else:
            config.data[key] = value
    return data.position(config.data, data.load_splits(config.data))


def test_resume_continues_at_the_saved_batch_when_the_data_is_unchanged():
    saved = {**_position(), "step": 12}
    assert data.resume_step(saved, _position(), step=12, allow_change=False) == 12
    # Older checkpoints stored only the seed and batch size, and no step.
    old = {"seed": 0, "global_batch_size": 16}
    assert data.resume_step(old, _position(), step=6, allow_change=False) == 6


@pytest.mark.parametrize(
    "change,field",
    [
        ({"seed": 5}, "data.seed"),
        ({"global_batch_size": 32}, "data.global_batch_size"),
        ({"kwargs.validation_fraction": 0.2}, "data.kwargs"),
    ],
)
def test_resume_with_changed_data_is_refused_unless_allowed(change, field):
    saved = {**_position(), "step": 6}
    current = _position(**change)
    with pytest.raises(data.ConfigError) as info:
        data.resume_step(saved, current, step=6, allow_change=False)
    message = str(info.value)
    assert info.value.field == field and "\n" not in message
    assert "allow_data_change" in message and f"Received: {field}=" in message
    assert data.resume_step(saved, current, step=6, allow_change=True) == 6


def test_resume_with_other_records_is_refused():
    saved = {**_position(), "train": {"length": 7, "files": ""}, "step": 6}
    with pytest.raises(data.ConfigError) as info:
        data.resume_step(saved, _position(), step=6, allow_change=False)
    assert info.value.field == "data" and "training records differ" in str(info.value)


def _batches(ds):
    return [np.asarray(b).tolist() for b in ds]


@pytest.mark.parametrize(
    "reading", [data.Reading(1, 1, 0), data.Reading(16, 500, 0), data.Reading(2, 8, 2)]
)
def test_read_ahead_settings_keep_the_batches(reading):
    flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags (the launcher parses them).
    records, shard = _Indices(), DataShard(1, 2)
    common = dict(seed=4, global_batch_size=8, shard=shard, start_step=5, num_steps=9)
    plain = _batches(data.train_dataset(records, **common))
    assert _batches(data.train_dataset(records, **common, reading=reading)) == plain


class _Slow(_Indices):
    def __getitem__(self, i):
        time.sleep(0.02)
        return np.int64(i)


def test_data_wait_counts_the_time_spent_waiting_for_batches_and_keeps_them():
    records, shard = _Slow(), DataShard(0, 2)
    common = dict(seed=4, global_batch_size=8, shard=shard, start_step=2, num_steps=9)
    wait = data.DataWait()
    began = time.perf_counter()
    timed = _batches(
        data.train_dataset(records, **common, reading=data.Reading(1, 1, 0), wait=wait)
    )
    elapsed = time.perf_counter() - began
    assert timed == _batches(data.train_dataset(_Indices(), **common))
    # 9 batches of 4 records at 20 ms each, read by one thread one record ahead:
    # nothing else to do here, so most of it is waiting.
    assert 0.5 * 9 * 4 * 0.02 <= wait.seconds <= elapsed
