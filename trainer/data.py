"""grain pipelines: the sequence of global batches is a pure function of
(data seed, global step), whatever the number of processes reading it.

Global batch `s` is records [s*G, (s+1)*G) of the training records shuffled
by `data.seed` (reshuffled every pass). A process feeds a contiguous block of
L = G / shard.count of them: the local batches are the shuffled records
batched by L and sharded with grain's slicing, `[shard.index::shard.count]`.
JAX then assembles the global batch from the processes' blocks.
"""

from __future__ import annotations

import functools
import os
import sysconfig
from dataclasses import dataclass

import grain
import numpy as np

from configs.validation import ConfigError
from trainer.mesh import DataShard


@dataclass(frozen=True)
class Splits:
    """Random-access training and validation records of one data set."""

    train: object
    validation: object


class _BytesWindows:
    """Windows of seq_len + 1 bytes at stride seq_len: (input, next-byte target)."""

    def __init__(self, corpus: np.ndarray, seq_len: int):
        self._corpus = corpus
        self._seq_len = seq_len

    def __len__(self) -> int:
        return (len(self._corpus) - 1) // self._seq_len

    def __getitem__(self, index: int):
        start = index * self._seq_len
        window = self._corpus[start : start + self._seq_len + 1].astype(np.int32)
        return window[:-1], window[1:]


@functools.cache
def stdlib_corpus(max_bytes: int) -> np.ndarray:
    """The Python standard library's .py files, in sorted path order, as bytes.

    The same on every process of one machine image; read once per process.
    """
    root = sysconfig.get_paths()["stdlib"]
    chunks, total = [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames if d not in ("site-packages", "test", "tests", "idlelib")
        )
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            with open(os.path.join(dirpath, name), "rb") as f:
                chunks.append(f.read())
            total += len(chunks[-1])
            if total >= max_bytes:
                return np.frombuffer(b"".join(chunks)[:max_bytes], dtype=np.uint8)
    return np.frombuffer(b"".join(chunks), dtype=np.uint8)


class _Arrays:
    def __init__(self, x: np.ndarray, y: np.ndarray):
        self._x, self._y = x, y

    def __len__(self) -> int:
        return len(self._x)

    def __getitem__(self, index: int):
        return self._x[index], self._y[index]


def load_splits(data_config) -> Splits:
    """Training and validation records of `data_config.name`."""
    if data_config.name == "stdlib_bytes":
        corpus = stdlib_corpus(data_config.max_bytes)
        split = int(len(corpus) * (1 - data_config.validation_fraction))
        return Splits(
            train=_BytesWindows(corpus[:split], data_config.seq_len),
            validation=_BytesWindows(corpus[split:], data_config.seq_len),
        )
    if data_config.name == "digits":
        from sklearn.datasets import load_digits  # Ships its data: no download.

        digits = load_digits()
        x = (digits.data / 16.0).astype(np.float32)
        y = digits.target.astype(np.int32)
        # A fixed permutation (not data.seed) so the split never moves.
        order = np.random.default_rng(0).permutation(len(x))
        n_val = int(len(x) * data_config.validation_fraction)
        val, train = order[:n_val], order[n_val:]
        return Splits(train=_Arrays(x[train], y[train]), validation=_Arrays(x[val], y[val]))
    raise ConfigError("data.name", "unknown data set.", data_config.name)


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


def train_dataset(
    records, *, seed: int, global_batch_size: int, shard: DataShard, start_step: int, num_steps: int
) -> grain.MapDataset:
    """The local batches of global steps [start_step, start_step + num_steps)."""
    ds = global_batches(records, seed=seed, global_batch_size=global_batch_size, shard=shard)
    return ds[start_step : start_step + num_steps]


def validation_dataset(
    records, *, global_batch_size: int, shard: DataShard, num_steps: int
) -> grain.MapDataset:
    """The same first `num_steps` validation global batches every epoch, unshuffled."""
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
