"""Byte-level decoder-only transformer LM on the Python standard library's source.

Tensor parallel: attention heads and MLP hidden units are sharded over the
`model` mesh axis, the batch over `data`.

Run (the default of `make run`):
  python scripts/simulate.py --num_processes=2 --devices_per_process=4 -- \
    --config=configs/lm.py --workdir=runs/default
Presets: `--config=configs/lm.py:tiny` (seconds, for tests).
"""

from __future__ import annotations

import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the LM config; `arg` names a preset: None or 'tiny'."""
    config = base.get_config()
    config.data.name = "stdlib_bytes"
    config.data.kwargs = ml_collections.ConfigDict(
        {"seq_len": 128, "max_bytes": 4_000_000, "validation_fraction": 0.05}
    )
    config.model.name = "transformer_lm"
    config.model.kwargs = ml_collections.ConfigDict(
        {
            "vocab_size": 256,
            # The data's: `--config.data.kwargs.seq_len=64` changes both.
            "seq_len": config.data.kwargs.get_ref("seq_len"),
            "num_layers": 2,
            "num_heads": 4,
            "embed_dim": 128,
            "mlp_dim": 512,
            "dropout": 0.0,
        }
    )

    config.mesh.shape = (-1, 2)
    config.mesh.axis_names = ("data", "model")
    # Heads and MLP hidden units over `model`; everything else replicated.
    config.mesh.layout_rules = (
        (r"attention/(query|key|value)/kernel$", (None, "model", None)),
        (r"attention/(query|key|value)/bias$", ("model", None)),
        (r"attention/attention_output/kernel$", ("model", None, None)),
        (r"mlp_in/kernel$", (None, "model")),
        (r"mlp_in/bias$", ("model",)),
        (r"mlp_out/kernel$", ("model", None)),
    )

    config.data.global_batch_size = 32

    config.optimizer.learning_rate = 3e-3

    config.trainer.epochs = 3
    config.trainer.steps_per_epoch = 80
    config.trainer.validation_steps = 4

    config.checkpoint.save_freq = "epoch"
    config.checkpoint.max_to_keep = 2

    if arg == "tiny":
        config.model.kwargs.num_layers = 1
        config.model.kwargs.embed_dim = 32
        config.model.kwargs.mlp_dim = 64
        config.model.kwargs.num_heads = 2
        config.data.kwargs.seq_len = 32
        config.data.global_batch_size = 16
        config.data.kwargs.max_bytes = 400_000
        config.trainer.epochs = 1
        config.trainer.steps_per_epoch = 8
        config.trainer.validation_steps = 1
        config.trainer.log_every = 2
    elif arg is not None:
        raise ValueError(f"configs/lm.py knows the presets: tiny. Received: {arg!r}")
    return config
