"""One process of a multi-process restore in the training topology (run by test_readme.py).

  python tests/integration/restore_worker.py --process_id=I --num_processes=N \\
      --port=P --devices=D --preset=tiny --workdir=W --out=OUT.npz

Builds the model of `configs/lm.py:<preset>` under its distribution as
`trainer.train` does, restores the latest step of W/checkpoints into it, and
process 0 writes every variable's full value (weights, then optimizer
variables keyed `optimizer/<path without the optimizer's name>`) to OUT.npz.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ["KERAS_BACKEND"] = "jax"
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> int:
    p = argparse.ArgumentParser()
    for name in ("process_id", "num_processes", "port", "devices"):
        p.add_argument(f"--{name}", type=int, required=True)
    for name in ("preset", "workdir", "out"):
        p.add_argument(f"--{name}", required=True)
    args = p.parse_args()
    import jax

    jax.config.update("jax_num_cpu_devices", args.devices)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{args.port}", args.num_processes, args.process_id)
    import keras
    import numpy as np
    from jax.experimental import multihost_utils

    import checkpointing
    from configs import lm, validation
    from trainer import mesh, models

    config = lm.get_config(args.preset)
    shape = validation.validate(
        config, num_devices=jax.device_count(), num_processes=jax.process_count()
    )
    distribution = mesh.build_distribution(shape, config.mesh.axis_names, config.mesh.layout_rules)
    with distribution.scope():
        keras.utils.set_random_seed(config.trainer.seed)
        model = models.build(config)
        restored = checkpointing.restore_latest(str(Path(args.workdir) / "checkpoints"), model)
    print(f"restored step {restored.step} on {jax.process_count()} processes", flush=True)
    named = [(v.path, v) for v in model.weights]
    named += [(f"optimizer/{v.path.split('/', 1)[-1]}", v) for v in model.optimizer.variables]
    # A collective (every process gathers): fine for the tiny test model.
    values = {
        name: np.asarray(multihost_utils.process_allgather(v.value, tiled=True))
        for name, v in named
    }
    if jax.process_index() == 0:
        np.savez(args.out, **values)
    return 0


if __name__ == "__main__":
    sys.exit(main())
