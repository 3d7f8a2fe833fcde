"""Restore: podfit's `checkpointing.restore` against Keras' `model.load_weights`, same step.

A fit with podfit's callback and one with Keras' background OrbaxCheckpoint each commit step 2,
the only step in their directories. Every round, in a rotating order, each reader loads it into
the model on its own mesh ("same mesh") and on another ("other mesh": every array resharded):

  podfit_restore  checkpointing.restore(podfit_dir, model, 2)  (checks the manifest first)
  keras           model.load_weights(podfit_dir): Keras' reader of the same step
  keras_own       model.load_weights(keras_dir): Keras' reader of its own callback's step

A figure is the seconds until every variable is ready; the page cache is warm for all.
"""

from __future__ import annotations

import os
import statistics
import time

import bench_save
import jax

import checkpointing


def measure(meshes, data, batch_size: int, rounds: int, scratch: str, log) -> dict:
    """`meshes`: {"same": (model, distribution), "other": (model, distribution)}."""
    dirs = {name: os.path.join(scratch, f"restore_{name}") for name in ("podfit", "keras_bg")}
    for name, d in dirs.items():  # Writes step 2 from the "same" mesh.
        bench_save.run_fit(*meshes["same"], *data(2), batch_size, bench_save.VARIANTS[name], 2, d)
    readers = {
        "podfit_restore": lambda m: checkpointing.restore(dirs["podfit"], m, 2),
        "keras": lambda m: m.load_weights(dirs["podfit"]),
        "keras_own": lambda m: m.load_weights(dirs["keras_bg"]),
    }
    jobs = [(reader, mesh) for reader in readers for mesh in meshes]
    seconds: dict[str, list[float]] = {f"{reader}_{mesh}": [] for reader, mesh in jobs}
    for r in range(rounds):
        for reader, mesh in jobs[r % len(jobs) :] + jobs[: r % len(jobs)]:
            m, d = meshes[mesh]
            with d.scope():
                start = time.perf_counter()
                readers[reader](m)
                jax.block_until_ready([v.value for v in m.variables])
            seconds[f"{reader}_{mesh}"].append(time.perf_counter() - start)
        log(f"restore round {r}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in seconds.items()))
    figures = {
        reader: {f"{mesh} mesh": statistics.median(seconds[f"{reader}_{mesh}"]) for mesh in meshes}
        for reader in readers
    }
    return {"step": 2, "seconds": seconds, "figures": figures}
