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

# The built-in factories (trainer/models.py:REGISTRY, trainer/sources.py:REGISTRY),
# named here so that a typo is refused before any device work. Any other name
# must be an import path "package.module:function".
BUILTIN_MODELS = ("transformer_lm", "mlp", "gemma", "llama")
BUILTIN_DATA = ("stdlib_bytes", "digits", "tokens", "array_record")


def either(value):
    """A field that takes more than one type (an int or "epoch", None or a str).

    ml-collections fixes a field's type at its first value; a reference of
    type `object` takes each of them from a config file and from a flag
    (`--config.checkpoint.save_freq=20` and `=epoch` both parse).
    """
    return ml_collections.FieldReference(value, field_type=object)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Returns the schema with neutral defaults; `arg` is unused here."""
    del arg
    config = ml_collections.ConfigDict()

    config.mesh = ml_collections.ConfigDict()
    # One entry may be -1: "all the devices that are left".
    config.mesh.shape = (-1, 1)
    config.mesh.axis_names = ("data", "model")
    # Multi-slice TPU: slices along each axis, e.g. (2, 1) = 2 slices along
    # `data`. mesh.shape is then one slice's mesh, and the global mesh is their
    # product per axis (mesh_utils.create_hybrid_device_mesh). () = one slice.
    config.mesh.dcn_shape = ()
    # Ordered (regex over the variable path, partition spec) pairs; the first
    # rule whose regex matches (re.search) a variable's path gives its layout.
    # Variables no rule matches are replicated. The entry "auto" (alone:
    # ("auto",); with rules: ("auto", (regex, spec), ...)) adds fully sharded
    # data parallelism: every variable of at least `auto_min_size` elements,
    # and its optimizer slots, is also sharded over `data` along its largest
    # dimension that `data` divides and no rule shards (rules naming `model`
    # keep their dimensions). The entry "backbone" puts the model's own layouts
    # (its factory's get_layout_map: the KerasHub models) in its place; with no
    # explicit rule, a mesh with a `model` axis gets them anyway.
    config.mesh.layout_rules = ()
    config.mesh.auto_min_size = 2**14

    # `name`: a built-in (BUILTIN_DATA) or "package.module:function" returning
    # (train, validation) random-access sources; called with `kwargs`.
    config.data = ml_collections.ConfigDict()
    config.data.name = "digits"
    # scikit-learn's bundled 8x8 handwritten digits (1,797 images).
    config.data.kwargs = ml_collections.ConfigDict({"validation_fraction": 0.1})
    config.data.global_batch_size = 64
    config.data.seed = 0
    # Read-ahead (grain ReadOptions; read_workers > 0: mp_prefetch processes
    # for heavy decoding). None of it changes which batches come.
    config.data.read_threads = 16
    config.data.read_buffer = 500
    config.data.read_workers = 0

    # `name`: a built-in (BUILTIN_MODELS) or "package.module:function" returning
    # an uncompiled keras.Model; called with `kwargs`.
    config.model = ml_collections.ConfigDict()
    config.model.name = "mlp"
    config.model.kwargs = ml_collections.ConfigDict(
        {"hidden_sizes": (128, 128), "num_classes": 10, "dropout": 0.0}
    )
    # A Keras loss identifier or "package.module:function"; from_logits is
    # passed to the losses that take it.
    config.model.loss = "sparse_categorical_crossentropy"
    config.model.from_logits = True
    # Keras metric identifiers or import paths.
    config.model.metrics = ("accuracy",)

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 1e-3
    config.optimizer.weight_decay = 0.0
    config.optimizer.global_clipnorm = 1.0
    # 'constant', 'cosine' or 'linear' (decay), each after a linear warmup of
    # `warmup_steps`; the decay lasts `decay_steps` (0: the rest of the run)
    # down to `alpha` x learning_rate. Steps are optimizer steps.
    config.optimizer.schedule = "constant"
    config.optimizer.warmup_steps = 0
    config.optimizer.decay_steps = 0
    config.optimizer.alpha = 0.0
    # Batches whose mean gradient makes one update (1: every batch).
    config.optimizer.gradient_accumulation_steps = 1

    config.trainer = ml_collections.ConfigDict()
    config.trainer.epochs = 2
    config.trainer.steps_per_epoch = 50
    config.trainer.validation_steps = 5
    config.trainer.seed = 0
    # Steps between metric lines in <workdir>/metrics.jsonl.
    config.trainer.log_every = 10
    # 'float32', 'mixed_bfloat16' (bfloat16 compute, float32 weights) or 'bfloat16'.
    config.trainer.dtype_policy = "float32"
    # Batches per compiled call (Keras' steps_per_execution).
    config.trainer.steps_per_execution = 1
    # A resumed run refuses data settings that would change the sequence of
    # batches (data.name, kwargs, seed, global_batch_size, the records'
    # files and length); True continues anyway.
    config.trainer.allow_data_change = False
    # TensorBoard event files in <workdir>/tensorboard/ (process 0; trainer/tensorboard.py).
    config.trainer.tensorboard = True
    # (start, stop): traces optimizer steps start..stop (both included, from 1)
    # with jax.profiler into <workdir>/profile/process_<i>/; () = no trace.
    config.trainer.profile_steps = ()
    # False: process 0 alone traces; True: every process (each in its folder).
    config.trainer.profile_all_processes = False

    # The fields of checkpointing.CheckpointOptions, plus `enabled`; checked
    # by that class (see configs/validation.py).
    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.enabled = True
    # 'epoch' or a number of steps, as a string or an int.
    config.checkpoint.save_freq = either("epoch")
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
