"""`make bench`: podfit against what users would write instead, one question per module.

  bench_save.py     per save: blocked, lost, time to durable (podfit's callback, Keras'
                    OrbaxCheckpoint background and sync, an Orbax CheckpointManager by hand)
  bench_restore.py  restore, same mesh and another, against Keras' `load_weights`
  bench_step.py     per step: `trainer.train` against a raw `jax.jit` + optax loop
  bench_report.py   targets; docs/benchmarks.json, docs/benchmarks.png, docs/benchmarks.md

Each on the LM of configs/lm.py sized by the flags; a question's variants share the model
and batches, their order changes every round, and figures are medians over rounds.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("JAX_NUM_CPU_DEVICES", "2")  # Two meshes to restore between (CPU only).
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import shlex  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import bench_report  # noqa: E402
import bench_restore  # noqa: E402
import bench_save  # noqa: E402
import bench_step  # noqa: E402
import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from configs import lm, validation  # noqa: E402
from trainer import mesh, models  # noqa: E402

_F = flags
PARAMS = _F.DEFINE_float("param_millions", 16, "LM size of the save and restore questions.")
BATCH = _F.DEFINE_integer("batch_size", 4, "Global batch of the save and restore questions.")
SEQ = _F.DEFINE_integer("seq_len", 16, "Sequence length of the save and restore questions.")
ROUNDS = _F.DEFINE_integer("rounds", 5, "Rounds of the save and restore questions.")
SAVES = _F.DEFINE_integer("saves", 3, "Saves per fit.")
SAVE_EVERY = _F.DEFINE_integer("save_every", 0, "Steps between saves; 0: 3 x slowest write.")
STEP_PARAMS = _F.DEFINE_float("step_param_millions", 0.4, "LM size of the per-step question.")
STEP_BATCH = _F.DEFINE_integer("step_batch_size", 32, "Global batch of the per-step question.")
STEP_SEQ = _F.DEFINE_integer("step_seq_len", 128, "Sequence length of the per-step question.")
STEPS = _F.DEFINE_integer("step_steps", 100, "Timed steps per run of the per-step question.")
WARMUP = _F.DEFINE_integer("step_warmup", 10, "Untimed steps before the timed ones.")
STEP_ROUNDS = _F.DEFINE_integer("step_rounds", 3, "Rounds of the per-step question.")
MODEL_AXIS = _F.DEFINE_integer("model_axis", 2, "`model` mesh axis; the other mesh has 1.")
OUT = _F.DEFINE_string("out", os.path.join(REPO_ROOT, "docs"), "Folder of the JSON and PNG.")
DOC = _F.DEFINE_string("doc", os.path.join(REPO_ROOT, "docs", "benchmarks.md"), "'': none.")
SCRATCH = _F.DEFINE_string("scratch", os.path.join(REPO_ROOT, "runs", "bench"), "Checkpoints.")
ALL = [PARAMS, BATCH, SEQ, ROUNDS, SAVES, SAVE_EVERY, STEP_PARAMS, STEP_BATCH, STEP_SEQ]
ALL += [STEPS, WARMUP, STEP_ROUNDS, MODEL_AXIS]
_START = time.perf_counter()


def log(message: str) -> None:
    print(f"[bench {time.perf_counter() - _START:6.1f}s] {message}", flush=True)


def lm_config(param_millions: float, batch_size: int, seq_len: int):
    """configs/lm.py, as wide as gives about `param_millions` parameters."""
    config = lm.get_config()
    per_width2 = 12 * config.model.kwargs.num_layers  # Attention 4 d^2 and MLP 8 d^2 per layer.
    width = 64 * max(1, round((param_millions * 1e6 / per_width2) ** 0.5 / 64))
    config.model.kwargs.embed_dim, config.model.kwargs.mlp_dim = width, 4 * width
    config.data.global_batch_size, config.data.kwargs.seq_len = batch_size, seq_len
    config.mesh.shape = (-1, min(MODEL_AXIS.value, jax.device_count()))
    return config


def build(config, mesh_shape):
    """The config's model, compiled, and its distribution over the mesh `mesh_shape`."""
    shape = validation.resolve_mesh_shape(mesh_shape, jax.device_count())
    dist = mesh.build_distribution(shape, config.mesh.axis_names, config.mesh.layout_rules)
    with dist.scope():
        keras.utils.set_random_seed(0)
        return models.build(config), dist


def main(argv) -> None:
    del argv
    for flag in ALL:
        if flag.value < 0 or (flag.value == 0 and flag is not SAVE_EVERY):
            sys.stderr.write(f"bench: --{flag.name} must be > 0. Received: {flag.value}\n")
            sys.exit(2)
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
    os.makedirs(SCRATCH.value, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="bench_", dir=SCRATCH.value)
    results = {"meta": bench_report.machine(), "flags": {f.name: f.value for f in ALL}}
    results["meta"]["command"] = shlex.join(["python", "scripts/bench.py", *sys.argv[1:]])
    config = lm_config(PARAMS.value, BATCH.value, SEQ.value)
    try:
        meshes = {"same": build(config, config.mesh.shape), "other": build(config, (-1, 1))}
        (model, dist), rounds = meshes["same"], ROUNDS.value
        results["model"] = bench_report.describe(config, model)
        log(f"save and restore: {results['model']}")

        def data(steps):
            xs, ys = zip(*bench_step.batches(config, steps), strict=True)
            return np.concatenate(xs), np.concatenate(ys)

        results["save"] = bench_save.measure(
            model, dist, data, BATCH.value, SAVES.value, SAVE_EVERY.value, rounds, scratch, log
        )
        results["restore"] = bench_restore.measure(meshes, data, BATCH.value, rounds, scratch, log)
        del meshes, model, dist
        config = lm_config(STEP_PARAMS.value, STEP_BATCH.value, STEP_SEQ.value)
        model, dist = build(config, config.mesh.shape)
        results["step"] = bench_step.measure(
            config, model, dist, STEPS.value, WARMUP.value, STEP_ROUNDS.value, scratch, log
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    results["meta"]["seconds"] = time.perf_counter() - _START
    bench_report.write(results, OUT.value, DOC.value, log)


if __name__ == "__main__":
    app.run(main)
