"""The built-in data factories: each returns `(train, validation)` sources.

A source is random access (`len`, `__getitem__`) and its records are `(x, y)`,
`(x, y, sample_weight)` or dicts of arrays (a dict is the model's inputs by
name). File-backed sources also list their `files` as `(path, size)` pairs,
which go into the data fingerprint a resumed run is compared against.

- `stdlib_bytes`: the Python standard library's own source, as bytes.
- `digits`: scikit-learn's bundled 8x8 handwritten digits.
- `tokens`: flat token files (.bin or .npy, uint16 or uint32), memory-mapped,
  read as windows of `seq_len + 1` tokens; `scripts/tokenize.py` writes them.
- `array_record`: grain's `ArrayRecordDataSource` over a glob; records are
  decoded by `decode` (an import path) or are `np.savez` archives
  (`scripts/write_array_record.py` writes them).
"""

from __future__ import annotations

import bisect
import functools
import io
import os
import sysconfig
from collections.abc import Sequence

import numpy as np
from etils import epath

from configs.validation import ConfigError
from trainer import plugins

TOKEN_DTYPES = ("uint16", "uint32")
_WILDCARDS = "*?["


def _fraction(field: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise ConfigError(field, "must be in (0, 1).", value)


def _positive(field: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(field, "expected an int > 0.", value)


class Windows:
    """Windows of seq_len + 1 tokens at stride seq_len: (input, next-token target).

    Windows never cross the end of one array into the next.
    """

    def __init__(self, arrays: Sequence[np.ndarray], seq_len: int, files=()):
        self._arrays = list(arrays)
        self._seq_len = seq_len
        counts = [max((len(a) - 1) // seq_len, 0) for a in self._arrays]
        self._ends = list(np.cumsum(counts)) if counts else [0]
        self.files = tuple(files)

    def __len__(self) -> int:
        return int(self._ends[-1])

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(index)
        i = bisect.bisect_right(self._ends, index)
        start = (index - (self._ends[i - 1] if i else 0)) * self._seq_len
        window = np.asarray(self._arrays[i][start : start + self._seq_len + 1], dtype=np.int32)
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


def stdlib_bytes(*, seq_len: int = 128, max_bytes: int = 4_000_000, validation_fraction=0.05):
    """Bytes of the standard library's source: on every machine, nothing to download."""
    _positive("data.kwargs.seq_len", seq_len)
    _positive("data.kwargs.max_bytes", max_bytes)
    _fraction("data.kwargs.validation_fraction", validation_fraction)
    corpus = stdlib_corpus(max_bytes)
    split = int(len(corpus) * (1 - validation_fraction))
    return Windows([corpus[:split]], seq_len), Windows([corpus[split:]], seq_len)


class Arrays:
    """Records `(x[i], y[i])` of two equally long arrays."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self._x, self._y = x, y

    def __len__(self) -> int:
        return len(self._x)

    def __getitem__(self, index: int):
        return self._x[index], self._y[index]


def digits(*, validation_fraction=0.1):
    """scikit-learn's bundled digits (1,797 images of 64 pixels in [0, 1])."""
    _fraction("data.kwargs.validation_fraction", validation_fraction)
    from sklearn.datasets import load_digits  # noqa: PLC0415  (ships its data: no download)

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int32)
    # A fixed permutation (not data.seed) so the split never moves.
    order = np.random.default_rng(0).permutation(len(x))
    n_val = int(len(x) * validation_fraction)
    val, train = order[:n_val], order[n_val:]
    return Arrays(x[train], y[train]), Arrays(x[val], y[val])


def glob(field: str, patterns) -> list[epath.Path]:
    """The sorted files matching a glob (or a tuple of globs); none is an error."""
    if isinstance(patterns, str):
        patterns = (patterns,)
    if not patterns or not all(isinstance(p, str) and p for p in patterns):
        raise ConfigError(field, "expected a glob of paths or a tuple of them.", patterns)
    found = []
    for pattern in patterns:
        parts = pattern.split("/")
        first = next((i for i, p in enumerate(parts) if any(c in p for c in _WILDCARDS)), None)
        if first is None:
            path = epath.Path(pattern)
            found.extend([path] if path.exists() else [])
        else:
            root = epath.Path("/".join(parts[:first]) or ".")
            found.extend(sorted(root.glob("/".join(parts[first:]))))
    if not found:
        raise ConfigError(field, "matches no file.", patterns)
    return sorted(set(found), key=str)


def _files(paths) -> tuple:
    return tuple((str(p), p.stat().length) for p in paths)


def _token_array(path: epath.Path, dtype: str) -> np.ndarray:
    local = not str(path).startswith(("gs://", "s3://"))
    if str(path).endswith(".npy"):
        if local:
            array = np.load(os.fspath(path), mmap_mode="r")
        else:
            array = np.load(io.BytesIO(path.read_bytes()))
        if array.ndim != 1 or array.dtype.name not in TOKEN_DTYPES:
            raise ConfigError(
                "data.kwargs.train",
                "a .npy token file must hold a flat uint16 or uint32 array; "
                f"{path} holds {array.dtype.name} of shape {array.shape}.",
                str(path),
            )
        return array
    if local:
        return np.memmap(os.fspath(path), dtype=dtype, mode="r")
    return np.frombuffer(path.read_bytes(), dtype=dtype)  # Object stores cannot be mapped.


def _token_windows(field: str, patterns, seq_len: int, dtype: str) -> Windows:
    paths = glob(field, patterns)
    windows = Windows([_token_array(p, dtype) for p in paths], seq_len, _files(paths))
    if not len(windows):
        raise ConfigError(field, f"holds no window of {seq_len + 1} tokens.", patterns)
    return windows


def tokens(*, train, validation=None, seq_len: int = 1024, dtype: str = "uint16"):
    """Flat token files read as (tokens, next tokens) windows of `seq_len`.

    Args:
      train: a glob (or tuple of globs) of `.bin` (raw `dtype`) or `.npy` files.
      validation: the same for the validation split, or None.
      seq_len: tokens per example; each window reads `seq_len + 1`.
      dtype: of the `.bin` files: "uint16" or "uint32" (.npy files say theirs).
    """
    _positive("data.kwargs.seq_len", seq_len)
    if dtype not in TOKEN_DTYPES:
        raise ConfigError("data.kwargs.dtype", f"expected one of {TOKEN_DTYPES}.", dtype)
    val = None
    if validation is not None:
        val = _token_windows("data.kwargs.validation", validation, seq_len, dtype)
    return _token_windows("data.kwargs.train", train, seq_len, dtype), val


def decode_npz(record: bytes):
    """An `np.savez` archive -> a tuple of its arrays (arr_0, arr_1, ...) or a dict."""
    with np.load(io.BytesIO(record)) as archive:
        names = list(archive.files)
        if all(n.startswith("arr_") for n in names):
            return tuple(archive[f"arr_{i}"] for i in range(len(names)))
        return {n: archive[n] for n in names}


class Decoded:
    """Records of a byte-record source passed through `decode`."""

    def __init__(self, source, decode, files=()):
        self._source, self._decode = source, decode
        self.files = tuple(files)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int):
        return self._decode(self._source[index])


def _array_records(field: str, patterns, decode) -> Decoded:
    import grain  # noqa: PLC0415

    paths = glob(field, patterns)
    source = grain.sources.ArrayRecordDataSource([os.fspath(p) for p in paths])
    if not len(source):
        raise ConfigError(field, "holds no record.", patterns)
    return Decoded(source, decode, _files(paths))


def array_record(*, train, validation=None, decode: str | None = None):
    """ArrayRecord files through grain's `ArrayRecordDataSource`.

    Args:
      train: a glob (or tuple of globs) of ArrayRecord files.
      validation: the same for the validation split, or None.
      decode: "package.module:function" turning a record's bytes into a
        record; None: the records are `np.savez` archives (`decode_npz`).
    """
    fn = decode_npz if decode is None else plugins.resolve("data.kwargs.decode", decode, {})
    if not callable(fn):
        raise ConfigError("data.kwargs.decode", "does not name a function.", decode)
    val = None
    if validation is not None:
        val = _array_records("data.kwargs.validation", validation, fn)
    return _array_records("data.kwargs.train", train, fn), val


REGISTRY = {
    "stdlib_bytes": stdlib_bytes,
    "digits": digits,
    "tokens": tokens,
    "array_record": array_record,
}
