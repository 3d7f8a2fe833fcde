"""A KerasHub Gemma (or Llama) on flat token files, laid out by its backbone.

The mesh has a `model` axis and no explicit layout rule, so the layouts are
`GemmaBackbone.get_layout_map` (kernels over `model` and `data`); "auto"
adds FSDP for whatever that map leaves replicated. Needs the `.[hub]` extra
(README, "KerasHub"). The argument is comma-separated words: 'tiny'
(seconds, for tests; without it, hidden size 128 for 240 steps), 'llama'
(LlamaBackbone instead of GemmaBackbone), 'preset=/path/to/dir' (the sizes
and weights of a local KerasHub preset; `--config.model.kwargs.load_weights=False`
for its sizes alone), e.g. `configs/gemma.py:tiny,llama`.

Run (token files from text: bytes as tokens, vocabulary 256):
  python scripts/tokenize_text.py --input='docs/*.md' --output=/tmp/tok/train.bin
  python scripts/tokenize_text.py --input=README.md --output=/tmp/tok/val.bin
  python scripts/simulate.py --num_processes=2 --devices_per_process=4 -- \
    --config=configs/gemma.py:tiny --workdir=runs/gemma \
    --config.data.kwargs.train=/tmp/tok/train.bin --config.data.kwargs.validation=/tmp/tok/val.bin
"""

from __future__ import annotations

import ml_collections

from configs import base

SIZES = {
    "gemma": {
        "vocabulary_size": 256,
        "num_layers": 2,
        "num_query_heads": 4,
        "num_key_value_heads": 4,
        "hidden_dim": 128,
        "intermediate_dim": 512,
        "head_dim": 32,
    },
    "llama": {
        "vocabulary_size": 256,
        "num_layers": 2,
        "num_query_heads": 4,
        "num_key_value_heads": 4,
        "hidden_dim": 128,
        "intermediate_dim": 256,
    },
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the config; `arg`: comma-separated 'tiny', 'llama', 'preset=PATH'."""
    words = [] if arg is None else arg.split(",")
    presets = [w.split("=", 1)[1] for w in words if w.startswith("preset=")]
    if any(w not in ("tiny", "llama") and not w.startswith("preset=") for w in words):
        raise ValueError(
            f"configs/gemma.py knows the words: tiny, llama, preset=PATH. Received: {arg!r}"
        )
    family = "llama" if "llama" in words else "gemma"
    config = base.get_config()
    config.data.name = "tokens"
    config.data.kwargs = ml_collections.ConfigDict(
        {
            "train": "data/train.bin",
            "validation": "data/val.bin",
            "seq_len": 128,
            "dtype": "uint16",
        }
    )
    config.model.name = family
    # The Backbone's arguments; or {"preset": "/path/to/preset"} alone.
    config.model.kwargs = ml_collections.ConfigDict(dict(SIZES[family]))

    config.mesh.shape = (-1, 2)
    config.mesh.axis_names = ("data", "model")
    config.mesh.layout_rules = ("auto",)  # And the backbone's get_layout_map.

    config.data.global_batch_size = 32
    config.optimizer.learning_rate = 3e-3
    config.trainer.epochs = 3
    config.trainer.steps_per_epoch = 80
    config.trainer.validation_steps = 4
    config.checkpoint.max_to_keep = 2

    if "tiny" in words:
        kwargs = config.model.kwargs
        kwargs.hidden_dim, kwargs.intermediate_dim, kwargs.num_layers = 32, 64, 1
        if family == "gemma":
            kwargs.head_dim = 8
        config.data.kwargs.seq_len = 32
        config.data.global_batch_size = 16
        config.trainer.epochs = 1
        config.trainer.steps_per_epoch = 8
        config.trainer.validation_steps = 1
        config.trainer.log_every = 2
    if presets:
        config.model.kwargs = ml_collections.ConfigDict(
            {"preset": presets[-1], "load_weights": True}
        )
    return config
