"""The schema every podfit config follows, nested by concern.

Model configs (configs/lm.py, configs/mlp.py) import this module, call
`get_config()` and edit the result; they never copy it. Every field that a
user may override from the command line exists here with its type, so
`--config.optimizer.learning_rate=3e-4` is checked by ml-collections and by
`configs.validation`.

Run:
  python -m launcher.main --config=configs/lm.py --workdir=/tmp/podfit_lm --num_cpu_devices=4
"""

from __future__ import annotations

import ml_collections

# Hyperparameters each registered model accepts, with their defaults. The
# validation refuses any other key under `model`.
MODEL_DEFAULTS: dict[str, dict] = {
    "transformer_lm": dict(
        vocab_size=256,
        num_layers=2,
        num_heads=4,
        embed_dim=128,
        mlp_dim=512,
        dropout=0.0,
    ),
    "mlp": dict(
        hidden_sizes=(128, 128),
        num_classes=10,
        dropout=0.0,
    ),
}

# Fields each data set accepts besides the common ones.
DATA_DEFAULTS: dict[str, dict] = {
    # Bytes of the Python standard library's own source files: on every
    # machine that runs podfit, nothing to download.
    "stdlib_bytes": dict(seq_len=128, max_bytes=4_000_000, validation_fraction=0.05),
    # scikit-learn's bundled 8x8 handwritten digits (1,797 images).
    "digits": dict(validation_fraction=0.1),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the schema with neutral defaults; `arg` is unused here."""
    del arg
    config = ml_collections.ConfigDict()

    config.mesh = ml_collections.ConfigDict()
    # One entry may be -1: "all the devices that are left".
    config.mesh.shape = (-1, 1)
    config.mesh.axis_names = ("data", "model")
    # Ordered (regex over the variable path, partition spec) pairs; the first
    # rule whose regex matches (re.search) a variable's path gives its layout.
    # Variables no rule matches are replicated.
    config.mesh.layout_rules = ()

    config.data = ml_collections.ConfigDict()
    config.data.global_batch_size = 64
    config.data.seed = 0
    set_data(config, "digits")
    set_model(config, "mlp")

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 1e-3
    config.optimizer.weight_decay = 0.0
    config.optimizer.global_clipnorm = 1.0

    config.trainer = ml_collections.ConfigDict()
    config.trainer.epochs = 2
    config.trainer.steps_per_epoch = 50
    config.trainer.validation_steps = 5
    config.trainer.seed = 0
    # Steps between metric lines in <workdir>/metrics.jsonl.
    config.trainer.log_every = 10

    # The fields of checkpointing.CheckpointOptions, plus `enabled`; checked
    # by that class (see configs/validation.py).
    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.enabled = True
    # 'epoch' or a number of steps, as a string or an int.
    config.checkpoint.save_freq = "epoch"
    config.checkpoint.max_to_keep = 3
    config.checkpoint.save_best_only = False
    config.checkpoint.monitor = "val_loss"
    config.checkpoint.mode = "auto"
    # False: fit also waits for each write.
    config.checkpoint.save_on_background = True
    # Best K by `monitor` kept besides the latest `max_to_keep` (None: none).
    config.checkpoint.keep_best = ml_collections.config_dict.placeholder(int)
    # Steps that are a multiple of this are kept for good (None: none).
    config.checkpoint.keep_period = ml_collections.config_dict.placeholder(int)
    config.checkpoint.barrier_timeout_s = 300.0
    config.checkpoint.verbose = 0
    config.checkpoint.initial_value_threshold = ml_collections.config_dict.placeholder(float)
    config.checkpoint.save_weights_only = False
    # Where the state is copied before the background write: 'auto', 'device', 'host'.
    config.checkpoint.snapshot = "auto"
    return config


def set_model(config: ml_collections.ConfigDict, name: str) -> None:
    """Replaces `config.model` with `name` and its default hyperparameters."""
    model = ml_collections.ConfigDict({"name": name})
    for key, value in MODEL_DEFAULTS[name].items():
        model[key] = value
    config.model = model


def set_data(config: ml_collections.ConfigDict, name: str) -> None:
    """Keeps only the data fields that data set `name` uses."""
    data = ml_collections.ConfigDict(
        {
            "name": name,
            "global_batch_size": config.data.global_batch_size,
            "seed": config.data.seed,
        }
    )
    for key, value in DATA_DEFAULTS[name].items():
        data[key] = value
    config.data = data
