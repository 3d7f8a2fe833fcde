"""File-backed data without user code: token files and ArrayRecord files the tests write."""

import subprocess
import sys

import numpy as np
import pytest
from ml_collections import ConfigDict

from configs.validation import ConfigError
from scripts import write_array_record
from tests.helpers import REPO, env
from trainer import data, sources
from trainer.mesh import DataShard


def _data(name, **kwargs):
    return ConfigDict({"name": name, "kwargs": kwargs, "seed": 3, "global_batch_size": 4})


def test_token_bin_and_npy_files_are_next_token_windows(tmp_path):
    a = np.arange(0, 50, dtype=np.uint16)
    b = np.arange(1000, 1030, dtype=np.uint32)
    a.tofile(tmp_path / "part0.bin")
    np.save(tmp_path / "part1.npy", b)
    (tmp_path / "other.txt").write_text("not tokens")
    splits = data.load_splits(
        _data("tokens", train=str(tmp_path / "part0.bin"), seq_len=8, dtype="uint16")
    )
    assert len(splits.train) == 49 // 8 and splits.validation is None
    x, y = splits.train[2]
    assert x.dtype == np.int32 and x.tolist() == list(range(16, 24))
    assert y.tolist() == list(range(17, 25))
    # A glob of several files: windows never cross from one file into the next.
    both = data.load_splits(
        _data("tokens", train=(str(tmp_path / "part0.bin"), str(tmp_path / "*.npy")), seq_len=8)
    ).train
    assert len(both) == 6 + 29 // 8
    assert both[6][0].tolist() == list(range(1000, 1008))
    assert both[len(both) - 1][1][-1] == 1000 + 3 * 8 + 0
    with pytest.raises(IndexError):
        both[len(both)]
    assert [f[0] for f in both.files] == [str(tmp_path / "part0.bin"), str(tmp_path / "part1.npy")]


def test_token_files_are_memory_mapped(tmp_path):
    np.arange(100, dtype=np.uint16).tofile(tmp_path / "t.bin")
    train, _ = sources.tokens(train=str(tmp_path / "t.bin"), seq_len=4)
    assert isinstance(train._arrays[0], np.memmap)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(train="/nonexistent/*.bin"), "data.kwargs.train"),
        (dict(train="{d}/t.bin", dtype="int8"), "data.kwargs.dtype"),
        (dict(train="{d}/t.bin", seq_len=0), "data.kwargs.seq_len"),
        (dict(train="{d}/t.bin", seq_len=500), "data.kwargs.train"),
        (dict(train="{d}/t.bin", validation="{d}/none*.bin"), "data.kwargs.validation"),
        (dict(train="{d}/t.bin", bogus=1), "data.kwargs.bogus"),
        (dict(seq_len=8), "data.kwargs.train"),
        (dict(train="{d}/f.npy"), "data.kwargs.train"),
    ],
)
def test_bad_token_settings_name_the_field(tmp_path, kwargs, field):
    np.arange(100, dtype=np.uint16).tofile(tmp_path / "t.bin")
    np.save(tmp_path / "f.npy", np.zeros((4, 4), np.float32))
    kwargs = {k: v.format(d=tmp_path) if isinstance(v, str) else v for k, v in kwargs.items()}
    with pytest.raises(ConfigError) as info:
        data.load_splits(_data("tokens", **kwargs))
    assert info.value.field == field and "\n" not in str(info.value)


def test_tokenize_text_writes_bytes_that_tokens_reads(tmp_path):
    (tmp_path / "a.txt").write_text("hello world, " * 20)
    (tmp_path / "b.txt").write_text("second file " * 10)
    out = tmp_path / "tok" / "train.bin"
    r = subprocess.run(
        [sys.executable, "scripts/tokenize_text.py", f"--input={tmp_path}/*.txt",
         f"--output={out}", "--separator=0"],
        cwd=REPO, env=env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    ids = np.fromfile(out, dtype=np.uint16)
    text = ("hello world, " * 20).encode() + b"\0" + ("second file " * 10).encode() + b"\0"
    assert ids.tolist() == list(text)
    assert f"{len(text)} tokens, uint16" in r.stdout
    train, _ = sources.tokens(train=str(out), seq_len=16)
    assert bytes(train[0][0].astype(np.uint8)) == text[:16]


def test_tokenize_text_with_a_local_tokenizer_file(tmp_path):
    # A stand-in for the `tokenizers` package: the script's use of its API.
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "tokenizers.py").write_text(
        "class _E:\n    def __init__(self, ids): self.ids = ids\n"
        "class Tokenizer:\n    @staticmethod\n    def from_file(path): return Tokenizer()\n"
        "    def encode(self, text): return _E([70000 + len(w) for w in text.split()])\n"
        "    def get_vocab_size(self): return 70010\n"
    )
    (tmp_path / "a.txt").write_text("a bb ccc")
    (tmp_path / "tok.json").write_text("{}")
    out = tmp_path / "t.npy"
    run_env = {**env(), "PYTHONPATH": f"{stub}:{REPO}"}
    args = [sys.executable, "scripts/tokenize_text.py", f"--input={tmp_path}/a.txt"]
    r = subprocess.run(
        [*args, f"--output={out}", f"--tokenizer={tmp_path}/tok.json"],
        cwd=REPO, env=run_env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    ids = np.load(out)
    assert ids.dtype == np.uint32 and ids.tolist() == [70001, 70002, 70003]
    # Without the package: one line, exit 2.
    missing = tmp_path / "missing"
    missing.mkdir()
    (missing / "tokenizers.py").write_text("raise ImportError('absent', name='tokenizers')\n")
    r = subprocess.run(
        [*args, f"--output={out}", f"--tokenizer={tmp_path}/tok.json"],
        cwd=REPO, env={**env(), "PYTHONPATH": f"{missing}:{REPO}"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2 and "needs the 'tokenizers' package" in r.stderr, r.stderr
    assert len(r.stderr.splitlines()) == 1, r.stderr


def test_tokenize_text_with_a_real_tokenizers_file(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")  # The `hub` extra (make setup installs it).
    vocab = {"[UNK]": 0, "a": 1, "bb": 2, "ccc": 3}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tok.json"))
    (tmp_path / "a.txt").write_text("a bb ccc dddd")
    args = [sys.executable, "scripts/tokenize_text.py", f"--input={tmp_path}/a.txt"]
    out = tmp_path / "t.npy"
    r = subprocess.run(
        [*args, f"--output={out}", f"--tokenizer={tmp_path}/tok.json"],
        cwd=REPO, env=env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    ids = np.load(out)
    assert ids.dtype == np.uint16 and ids.tolist() == [1, 2, 3, 0]
    # A file that is not a tokenizer: one line naming the flag, exit 2.
    (tmp_path / "bad.json").write_text("{}")
    r = subprocess.run(
        [*args, f"--output={out}", f"--tokenizer={tmp_path}/bad.json"],
        cwd=REPO, env=env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert "--tokenizer is not a tokenizers JSON file" in r.stderr, r.stderr


def test_array_record_files_written_by_the_script_read_back(tmp_path):
    x = np.random.default_rng(0).normal(size=(30, 5)).astype(np.float32)
    y = np.arange(30, dtype=np.int32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    r = subprocess.run(
        [sys.executable, "scripts/write_array_record.py",
         f"--arrays={tmp_path}/x.npy,{tmp_path}/y.npy", f"--output={tmp_path}/train",
         "--num_shards=3"],
        cwd=REPO, env=env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    write_array_record.write(str(tmp_path / "val.array_record"), [(x[i], y[i]) for i in range(8)])
    splits = data.load_splits(
        _data(
            "array_record",
            train=str(tmp_path / "train-*.array_record"),
            validation=str(tmp_path / "val.array_record"),
        )
    )
    assert len(splits.train) == 30 and len(splits.validation) == 8
    got = {int(splits.train[i][1]): splits.train[i][0] for i in range(30)}
    assert sorted(got) == list(range(30))
    for i in range(30):
        np.testing.assert_array_equal(got[i], x[i])
    assert len(splits.train.files) == 3
    # The pipeline batches them like any source.
    batch = data.global_batches(splits.train, seed=1, global_batch_size=6, shard=DataShard(0, 2))[2]
    assert batch[0].shape == (3, 5) and batch[1].shape == (3,)


def decode_pair(record: bytes):
    """A user decoder: 'a,b' -> ({"features": [a]}, b)."""
    a, b = record.decode().split(",")
    return {"features": np.asarray([float(a)], np.float32)}, np.int32(b)


def test_array_record_with_a_named_decoder_and_dict_records(tmp_path):
    path = str(tmp_path / "d.array_record")
    write_array_record.write(path, [f"{i},{i % 3}" for i in range(9)], encode=str.encode)
    train, val = sources.array_record(train=path, decode="tests.trainer.test_sources:decode_pair")
    features, label = train[4]
    assert val is None and features["features"].tolist() == [4.0] and label == 1
    named = str(tmp_path / "n.array_record")
    write_array_record.write(named, [{"tokens": np.arange(3) + i} for i in range(4)])
    train, _ = sources.array_record(train=named)
    assert train[2]["tokens"].tolist() == [2, 3, 4]
    with pytest.raises(ConfigError) as info:
        sources.array_record(train=path, decode="tests.trainer.test_sources:nothing_here")
    assert info.value.field == "data.kwargs.decode"


def test_fingerprint_follows_files_and_length(tmp_path):
    np.arange(100, dtype=np.uint16).tofile(tmp_path / "t.bin")
    config = _data("tokens", train=str(tmp_path / "t.bin"), seq_len=4)
    first = data.position(config, data.load_splits(config))
    assert first == data.position(config, data.load_splits(config))
    np.arange(120, dtype=np.uint16).tofile(tmp_path / "t.bin")
    second = data.position(config, data.load_splits(config))
    assert second["train"] != first["train"] and second["train"]["length"] == 29
