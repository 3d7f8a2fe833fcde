"""Writes text files as one flat token file for `config.data.name = "tokens"`.

Usage:
  python scripts/tokenize_text.py --input='corpus/*.txt' --output=data/train.bin
  python scripts/tokenize_text.py --input='corpus/*.txt' --output=data/train.npy \\
      --tokenizer=/path/tokenizer.json            # a local `tokenizers` JSON
  python scripts/tokenize_text.py --input=a.txt --input=b.txt --output=data/val.bin \\
      --tokenizer=/path/spm.model                 # a local SentencePiece model

Bytes are the tokens by default (vocabulary 256). Files are read in sorted
order of their paths, each followed by `--separator` when it is >= 0 (an
end-of-text id). `.bin` files hold the raw ids (nanoGPT's format), `.npy`
files a flat array; both are uint16 when the vocabulary fits, else uint32
(pass the same `dtype` to the `tokens` data for `.bin` files). Nothing is
downloaded: the tokenizer file must be on this machine, and its package
(`tokenizers` or `sentencepiece`) installed. Prints the file, token count
and dtype.
"""

from __future__ import annotations

import glob
import os
import sys

import numpy as np
from absl import app, flags

_INPUT = flags.DEFINE_multi_string("input", None, "Text files or globs (repeatable).")
_OUTPUT = flags.DEFINE_string("output", None, "The token file to write: .bin or .npy.")
_TOKENIZER = flags.DEFINE_string(
    "tokenizer", None, "A local tokenizers JSON or SentencePiece .model file; default: bytes."
)
_SEPARATOR = flags.DEFINE_integer("separator", -1, "Token id appended after each file (-1: none).")


def _usage(message: str) -> None:
    print(f"tokenize_text: {message}", file=sys.stderr)
    sys.exit(2)


def encoder(path: str | None):
    """(encode(text) -> list of ids, vocabulary size) for bytes or a local tokenizer file."""
    if path is None:
        return (lambda text: list(text.encode("utf-8"))), 256
    if not os.path.isfile(path):
        _usage(f"--tokenizer is not a file on this machine. Received: --tokenizer={path}")
    try:
        if path.endswith(".model"):
            import sentencepiece  # noqa: PLC0415

            sp = sentencepiece.SentencePieceProcessor(model_file=path)
            return sp.encode, sp.get_piece_size()
        import tokenizers  # noqa: PLC0415

        try:
            tok = tokenizers.Tokenizer.from_file(path)
        except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception.
            _usage(f"--tokenizer is not a tokenizers JSON file ({e}). Received: --tokenizer={path}")
        return (lambda text: tok.encode(text).ids), tok.get_vocab_size()
    except ImportError as e:
        _usage(
            f"--tokenizer needs the {e.name!r} package (pip install {e.name}). "
            f"Received: --tokenizer={path}"
        )


def write(ids: np.ndarray, output: str) -> None:
    """`ids` as a flat token file: raw for .bin, a numpy array for .npy."""
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    if output.endswith(".npy"):
        np.save(output, ids)
    else:
        ids.tofile(output)


def main(argv):
    if len(argv) > 1:
        _usage(f"unexpected positional arguments. Received: {argv[1:]}")
    if not _INPUT.value:
        _usage("--input is required. Received: --input=None")
    output = _OUTPUT.value
    if not output or not output.endswith((".bin", ".npy")):
        _usage(f"--output must end in .bin or .npy. Received: --output={output}")
    paths = sorted({p for pattern in _INPUT.value for p in glob.glob(pattern)})
    if not paths:
        _usage(f"--input matches no file. Received: --input={_INPUT.value}")
    encode, vocab = encoder(_TOKENIZER.value)
    if _SEPARATOR.value >= vocab:
        _usage(f"--separator must be < the vocabulary ({vocab}). Received: {_SEPARATOR.value}")
    dtype = np.uint16 if vocab <= 2**16 else np.uint32
    chunks = []
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as f:
            chunks.append(np.asarray(encode(f.read()), dtype=dtype))
        if _SEPARATOR.value >= 0:
            chunks.append(np.asarray([_SEPARATOR.value], dtype=dtype))
    ids = np.concatenate(chunks) if chunks else np.zeros(0, dtype)
    write(ids, output)
    print(f"{output}: {len(ids)} tokens, {np.dtype(dtype).name}, vocabulary {vocab}")


if __name__ == "__main__":
    app.run(main)
