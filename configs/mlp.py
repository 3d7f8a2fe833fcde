"""MLP classifier on scikit-learn's bundled 8x8 digits; data parallel only.

Run:
  python scripts/simulate.py --num_processes=2 --devices_per_process=2 -- \
    --config=configs/mlp.py --workdir=runs/mlp
Presets: `--config=configs/mlp.py:tiny`.
"""

from __future__ import annotations

import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the MLP config; `arg` names a preset: None or 'tiny'."""
    config = base.get_config()  # digits and the MLP are the schema's defaults.
    config.mesh.shape = (-1,)
    config.mesh.axis_names = ("data",)
    config.mesh.layout_rules = ()
    config.data.global_batch_size = 64
    config.optimizer.learning_rate = 2e-3
    config.trainer.epochs = 3
    config.trainer.steps_per_epoch = 25
    config.trainer.validation_steps = 2
    config.checkpoint.monitor = "val_accuracy"
    config.checkpoint.mode = "max"
    if arg == "tiny":
        config.model.kwargs.hidden_sizes = (32,)
        config.data.global_batch_size = 16
        config.trainer.epochs = 1
        config.trainer.steps_per_epoch = 6
        config.trainer.validation_steps = 1
        config.trainer.log_every = 2
    elif arg is not None:
        raise ValueError(f"configs/mlp.py knows the presets: tiny. Received: {arg!r}")
    return config
