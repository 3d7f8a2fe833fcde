"""Writes numpy arrays as ArrayRecord files for `config.data.name = "array_record"`.

Usage:
  python scripts/write_array_record.py --arrays=x.npy,y.npy --output=data/train.array_record
  python scripts/write_array_record.py --arrays=x.npy,y.npy --output=data/train \\
      --num_shards=4     # data/train-00000-of-00004.array_record, ...

Record i holds `(a[i] for a in arrays)` as an `np.savez` archive, which the
`array_record` data reads back as the tuple `(x, y)` (the default decoder,
`trainer.sources:decode_npz`); `--names=tokens,targets` stores a dict of named
arrays instead. Records go round-robin to the shards; each shard is written
with `group_size:1`, the setting random access wants. From Python:
`write(path, records)` takes any iterable of tuples or dicts of arrays.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterable

import numpy as np
from absl import app, flags

_ARRAYS = flags.DEFINE_list("arrays", None, ".npy files of equal length: the fields of a record.")
_NAMES = flags.DEFINE_list("names", None, "Field names (a dict record); default: a tuple.")
_OUTPUT = flags.DEFINE_string("output", None, "Output path (with --num_shards > 1, a prefix).")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 1, "Files to spread the records over.")


def serialize(record) -> bytes:
    """A tuple (arr_0, arr_1, ...) or a dict of arrays as `np.savez` bytes."""
    buffer = io.BytesIO()
    if isinstance(record, dict):
        np.savez(buffer, **{k: np.asarray(v) for k, v in record.items()})
    else:
        np.savez(buffer, *[np.asarray(v) for v in record])
    return buffer.getvalue()


def write(path: str, records: Iterable, *, encode=serialize) -> int:
    """Writes `records` (each through `encode`) to one ArrayRecord file; returns the count."""
    from array_record.python.array_record_module import ArrayRecordWriter  # noqa: PLC0415

    writer = ArrayRecordWriter(path, "group_size:1")
    count = 0
    try:
        for record in records:
            writer.write(encode(record))
            count += 1
    finally:
        writer.close()
    return count


def _usage(message: str) -> None:
    print(f"write_array_record: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv):
    if len(argv) > 1:
        _usage(f"unexpected positional arguments. Received: {argv[1:]}")
    if not _ARRAYS.value or not _OUTPUT.value:
        _usage(f"--arrays and --output are required. Received: --arrays={_ARRAYS.value}")
    arrays = [np.load(p, mmap_mode="r") for p in _ARRAYS.value]
    if len({len(a) for a in arrays}) != 1:
        _usage(f"--arrays must have equal lengths. Received: {[len(a) for a in arrays]}")
    names = _NAMES.value
    if names and len(names) != len(arrays):
        _usage(f"--names needs one name per array. Received: --names={names}")
    n, shards = len(arrays[0]), _NUM_SHARDS.value
    if shards < 1:
        _usage(f"--num_shards must be >= 1. Received: --num_shards={shards}")
    for s in range(shards):
        path = (
            _OUTPUT.value
            if shards == 1
            else f"{_OUTPUT.value}-{s:05d}-of-{shards:05d}.array_record"
        )
        rows = range(s, n, shards)
        records = (
            dict(zip(names, (a[i] for a in arrays), strict=True))
            if names
            else tuple(a[i] for a in arrays)
            for i in rows
        )
        print(f"{path}: {write(path, records)} records")


if __name__ == "__main__":
    app.run(main)
