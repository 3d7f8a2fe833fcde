"""One process of a multi-process checkpointing test (run by test_multiprocess.py).

  python tests/checkpointing/mp_worker.py --mode=train|restore|fail \\
      --process_id=I --num_processes=N --port=P --devices=D --mesh=4,2 \\
      --directory=DIR --out=OUT

Writes OUT/result_p<I>.json (and OUT/weights_<mode>.npz from process 0): the
test compares them. Each process yields its own slice of every global batch.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

os.environ["KERAS_BACKEND"] = "jax"
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

GLOBAL_BATCH = 16
STEPS_PER_EPOCH = 6
EPOCHS = 2


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=["train", "restore", "fail", "unreadable"], required=True)
    p.add_argument("--process_id", type=int, default=0)
    p.add_argument("--num_processes", type=int, default=1)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--devices", type=int, default=4)
    p.add_argument("--mesh", default="4,2")
    p.add_argument("--directory", required=True)
    p.add_argument("--out", required=True)
    return p.parse_args()


def main() -> int:
    args = parse()
    import jax

    jax.config.update("jax_num_cpu_devices", args.devices)
    if args.num_processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(f"localhost:{args.port}", args.num_processes, args.process_id)
    import keras
    import numpy as np
    from jax.experimental import multihost_utils

    import checkpointing

    mesh_shape = tuple(int(s) for s in args.mesh.split(","))
    mesh = keras.distribution.DeviceMesh(mesh_shape, ["data", "model"], jax.devices())
    layout_map = keras.distribution.LayoutMap(mesh)
    layout_map["dense_1/kernel"] = (None, "model")
    layout_map["dense_2/kernel"] = ("model", None)
    keras.distribution.set_distribution(
        keras.distribution.ModelParallel(
            layout_map=layout_map, batch_dim_name="data", auto_shard_dataset=False
        )
    )
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=(8,))
    hidden = keras.layers.Dense(16, activation="relu", name="dense_1")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, name="dense_2")(hidden))
    model.compile(optimizer="adam", loss="mse")
    model.build((None, 8))

    def batches():
        # The global batch is a function of the step; this process yields its slice.
        local = GLOBAL_BATCH // jax.process_count()
        lo = jax.process_index() * local
        step = 0
        while True:
            rng = np.random.default_rng(step)
            x = rng.random((GLOBAL_BATCH, 8), dtype=np.float32)
            y = x[:, :2] * 2.0 - 1.0
            yield x[lo : lo + local], y[lo : lo + local]
            step += 1

    out = Path(args.out)
    result: dict = {"process": jax.process_index(), "mode": args.mode}
    try:
        if args.mode == "unreadable" and jax.process_index() == 1:
            # Every read of a file of this process' share fails (EIO).
            from checkpointing import manifest, retry

            retry.READ_BACKOFF_S = 0.01

            def unreadable(path):
                raise OSError(5, f"Input/output error (injected): {path}")

            manifest.checksum = unreadable
        if args.mode in ("restore", "unreadable"):
            restored = checkpointing.restore_latest(args.directory, model)
            result["step"] = restored.step
            result["saved_topology"] = restored.topology.summary()
            result["progress"] = [restored.progress.epoch, restored.progress.step_in_epoch]
        else:
            callback = checkpointing.OrbaxCheckpoint(
                args.directory,
                save_freq=4,
                max_to_keep=2,
                steps_per_epoch=STEPS_PER_EPOCH,
                data_state=lambda: {"seed": 0},
                metadata={"test": "multiprocess"},
                barrier_timeout_s=60,
            )
            if args.mode == "fail" and jax.process_index() == 1:
                original = callback._write

                def failing_write(step, *args):
                    if step >= 8:
                        raise OSError(f"injected write failure at step {step}")
                    original(step, *args)

                callback._write = failing_write
            callbacks = [callback]
            if args.mode == "train":
                # A second callback: its save_best_only decision is process 0's.
                callbacks.append(
                    checkpointing.OrbaxCheckpoint(
                        args.directory + "_best",
                        monitor="loss",
                        save_best_only=True,
                        barrier_timeout_s=60,
                    )
                )
            model.fit(
                batches(),
                steps_per_epoch=STEPS_PER_EPOCH,
                epochs=EPOCHS,
                verbose=0,
                callbacks=callbacks,
            )
            result["step"] = int(model.optimizer.iterations)
            if args.mode == "train":
                # Restoring the final step on the same topology is a no-op.
                result["restored"] = checkpointing.restore_latest(args.directory, model).step
        result["ok"] = True
    except Exception as e:  # noqa: BLE001 - reported to the test, then exit non-zero.
        result["ok"] = False
        result["error_type"] = type(e).__name__
        result["error"] = str(e)
        traceback.print_exc()
    if result["ok"]:
        # A collective: every process gathers the full values.
        values = {
            v.path: np.asarray(multihost_utils.process_allgather(v.value, tiled=True))
            for v in [*model.weights, *model.optimizer.variables]
        }
        if jax.process_index() == 0:
            np.savez(out / f"weights_{args.mode}_{args.mesh}.npz", **values)
    name = f"result_{args.mode}_p{jax.process_index()}.json"
    if args.mode == "restore":
        name = f"result_restore_{args.mesh}.json"
        if jax.process_count() > 1:
            name = f"result_restore_{args.mesh}_p{jax.process_index()}.json"
    (out / name).write_text(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
