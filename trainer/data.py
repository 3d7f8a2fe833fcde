"""grain pipelines: the sequence of global batches is a pure function of
(data seed, global step), whatever the number of processes reading it.

Global batch `s` is records [s*G, (s+1)*G) of the training records shuffled
by `data.seed` (reshuffled every pass). A process feeds a contiguous block of
L = G / shard.count of them: the local batches are the shuffled records
batched by L and sharded with grain's slicing, `[shard.index::shard.count]`.
JAX then assembles the global batch from the processes' blocks.

The records come from `config.data.name`: a built-in of trainer/sources.py or
"package.module:function", called with `config.data.kwargs`.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grain

from configs.validation import ConfigError
from trainer import plugins, sources
from trainer.mesh import DataShard


@dataclass(frozen=True)
class Splits:
    """Random-access training and validation records of one data set."""

    train: object
    validation: object


def _check_source(name: str, split: str, source, *, optional: bool) -> None:
    if source is None and optional:
        return
    if not (hasattr(source, "__len__") and hasattr(source, "__getitem__")):
        raise ConfigError(
            "data.name",
            f"the factory's {split} split must be a random-access source (len and "
            f"__getitem__); it is {type(source).__name__}.",
            name,
        )
    if not len(source):
        raise ConfigError("data.name", f"the factory's {split} split is empty.", name)
    record = source[0]
    ok = isinstance(record, Mapping) or (isinstance(record, tuple) and len(record) in (2, 3))
    if not ok:
        raise ConfigError(
            "data.name",
            f"{split} records must be (x, y), (x, y, sample_weight) or a dict of arrays; "
            f"record 0 is {type(record).__name__}.",
            name,
        )


def load_splits(data_config) -> Splits:
    """Training and validation records of `data_config.name` with its kwargs.

    Raises:
      ConfigError: an unknown name, an unimportable path, kwargs the factory
        does not take, a factory that raises or returns something else than
        `(train, validation)` sources.
    """
    name = data_config.name
    factory = plugins.resolve("data.name", name, sources.REGISTRY)
    result = plugins.call_factory("data", name, factory, plugins.plain(data_config.kwargs))
    if not isinstance(result, tuple | list) or len(result) != 2:
        raise ConfigError(
            "data.name",
            f"the factory must return (train, validation); it returned {type(result).__name__}.",
            name,
        )
    train, validation = result
    _check_source(name, "train", train, optional=False)
    _check_source(name, "validation", validation, optional=True)
    return Splits(train=train, validation=validation)


def fingerprint(source) -> dict:
    """What identifies a source's records cheaply: its length and files (path, size)."""
    if source is None:
        return {"length": 0, "files": ""}
    files = getattr(source, "files", ())
    digest = hashlib.sha256(json.dumps([list(f) for f in files]).encode()).hexdigest()
    return {"length": len(source), "files": digest[:16] if files else ""}


def position(data_config, splits: Splits) -> dict:
    """The data position of a run, but for the step: saved with every checkpoint."""
    return {
        "name": data_config.name,
        "kwargs": json.loads(json.dumps(plugins.plain(data_config.kwargs), default=str)),
        "seed": data_config.seed,
        "global_batch_size": data_config.global_batch_size,
        "train": fingerprint(splits.train),
    }


# The saved key, the field a difference is reported under, what it means.
_GUARDED = (
    ("name", "data.name"),
    ("kwargs", "data.kwargs"),
    ("seed", "data.seed"),
    ("global_batch_size", "data.global_batch_size"),
    ("train", "data"),
)


def resume_step(
    saved: Mapping[str, Any], current: Mapping[str, Any], *, step: int, allow_change: bool
) -> int:
    """The global step (batches) a resumed run continues at, after the guard.

    Args:
      saved: the data_state of the restored checkpoint.
      current: `position(...)` of this run.
      step: the batches the restored model was trained on (its optimizer's
        raw counter: with gradient accumulation the checkpoint's step counts
        updates instead).
      allow_change: `trainer.allow_data_change`: continue whatever changed.

    Raises:
      ConfigError: a field that would change the sequence of batches differs
        from the checkpoint's (only keys both have are compared).
    """
    if not allow_change:
        for key, field in _GUARDED:
            if key in saved and saved[key] != current[key]:
                what = "the training records" if key == "train" else field
                raise ConfigError(
                    field,
                    f"{what} differ from the checkpoint's ({saved[key]!r}), which would change "
                    "the sequence of batches; pass --config.trainer.allow_data_change=True "
                    "to continue anyway.",
                    current[key],
                )
    return int(step)


def _local_batch(global_batch_size: int, shard: DataShard) -> int:
    if global_batch_size % shard.count:
        raise ConfigError(
            "data.global_batch_size",
            f"must divide into {shard.count} process blocks.",
            global_batch_size,
        )
    return global_batch_size // shard.count


def global_batches(
    records, *, seed: int, global_batch_size: int, shard: DataShard
) -> grain.MapDataset:
    """This process' block of every training global batch, indexed by global step."""
    ds = grain.MapDataset.source(records).shuffle(seed=seed).repeat()
    ds = ds.batch(_local_batch(global_batch_size, shard), drop_remainder=True)
    return ds[shard.index :: shard.count]


@dataclass(frozen=True)
class Reading:
    """How batches are read ahead of the step: none of it changes which batches come.

    Attributes:
      threads: grain read threads (`ReadOptions.num_threads`).
      buffer: records read ahead (`ReadOptions.prefetch_buffer_size`).
      workers: processes that read and decode batches (`mp_prefetch`); 0: none.
        The sources must then be picklable.
    """

    threads: int = 16
    buffer: int = 500
    workers: int = 0

    @classmethod
    def of(cls, data_config) -> Reading:
        return cls(data_config.read_threads, data_config.read_buffer, data_config.read_workers)


class DataWait:
    """Seconds the training thread waited for its batches, summed (data loading badput).

    The time spent in the pipeline's `next`: with grain reading ahead in its
    threads (or `mp_prefetch` workers), a batch that is ready costs next to
    nothing, and what remains is the step waiting for the data.
    """

    def __init__(self):
        self._seconds = 0.0
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        with self._lock:
            self._seconds += seconds

    @property
    def seconds(self) -> float:
        with self._lock:
            return self._seconds


class _TimedIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, wait: DataWait):
        super().__init__(parent)
        self._wait = wait

    def __next__(self):
        began = time.perf_counter()
        try:
            return next(self._parent)
        finally:
            self._wait.add(time.perf_counter() - began)

    def get_state(self):
        return self._parent.get_state()

    def set_state(self, state):
        self._parent.set_state(state)


class _Timed(grain.IterDataset):
    """`parent`'s elements, unchanged; the time each `next` took is added to `wait`."""

    def __init__(self, parent: grain.IterDataset, wait: DataWait):
        super().__init__(parent)
        self._wait = wait

    def __iter__(self):
        return _TimedIterator(self._parent.__iter__(), self._wait)


def train_dataset(
    records,
    *,
    seed: int,
    global_batch_size: int,
    shard: DataShard,
    start_step: int,
    num_steps: int,
    reading: Reading | None = None,
    wait: DataWait | None = None,
):
    """The local batches of global steps [start_step, start_step + num_steps).

    With `reading`, an iterable dataset that reads ahead as it says, in the
    same order; without, the `MapDataset` (grain's default read-ahead). With
    `wait` (and `reading`), the time spent waiting for each batch is added to it.
    """
    ds = global_batches(records, seed=seed, global_batch_size=global_batch_size, shard=shard)
    ds = ds[start_step : start_step + num_steps]
    if reading is None:
        return ds
    it = ds.to_iter_dataset(grain.ReadOptions(reading.threads, reading.buffer))
    if reading.workers:
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=reading.workers))
    return it if wait is None else _Timed(it, wait)


def validation_dataset(
    records, *, global_batch_size: int, shard: DataShard, num_steps: int
) -> grain.MapDataset:
    """The same first `num_steps` validation global batches every epoch, unshuffled."""
    if records is None:
        raise ConfigError(
            "trainer.validation_steps", "the data set has no validation split; use 0.", num_steps
        )
    ds = grain.MapDataset.source(records).batch(
        _local_batch(global_batch_size, shard), drop_remainder=True
    )
    available = len(ds) // shard.count
    if num_steps > available:
        raise ConfigError(
            "trainer.validation_steps",
            f"asks for more batches than the validation split holds ({available}).",
            num_steps,
        )
    return ds[shard.index :: shard.count][:num_steps]
