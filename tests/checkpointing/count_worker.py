"""One process of the coordination-call count (run by test_coordination_calls.py).

  python tests/checkpointing/count_worker.py --process_id=I --num_processes=N \\
      --port=P --directory=DIR --out=OUT

One CPU device per process. The coordination-service client is wrapped with
a counter, then the process trains a tiny model for 6 steps with
`OrbaxCheckpoint(save_freq=2)` (saves at steps 2, 4 and 6) and calls
`restore_latest` once. OUT/calls_p<I>.json holds, for the fit and for the
restore, every call made: `calls` (all of them) and `rounds`: the distinct
(method, key) pairs, leaving out reads of the failure notices. A wait polls
one key (a blocking get with a 1 s timeout, then a look at the failure
notices) as often as the peers are slow, which depends on the machine, not
on the process count: it is one round.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import threading
from pathlib import Path

os.environ["KERAS_BACKEND"] = "jax"
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

SAVE_FREQ = 2
STEPS = 6
METHODS = (
    "blocking_key_value_get",
    "blocking_key_value_get_bytes",
    "key_value_delete",
    "key_value_dir_get",
    "key_value_dir_get_bytes",
    "key_value_increment",
    "key_value_set",
    "key_value_set_bytes",
    "key_value_try_get",
    "key_value_try_get_bytes",
    "wait_at_barrier",
)


class CountingClient:
    """Forwards to the real client; records (method, key) of each call."""

    def __init__(self, client):
        self._client = client
        self._lock = threading.Lock()
        self.calls: list[tuple[str, str]] = []

    def __getattr__(self, name):
        target = getattr(self._client, name)
        if name not in METHODS:
            return target

        def counted(key, *args, **kwargs):
            with self._lock:
                self.calls.append((name, str(key)))
            return target(key, *args, **kwargs)

        return counted

    def take(self) -> dict:
        with self._lock:
            calls, self.calls = self.calls, []
        # The namespace and step differ between runs; the kind of call does not.
        rounds = {c for c in calls if not (c[0] == "key_value_dir_get" and "/failed/" in c[1])}
        return {
            "calls": len(calls),
            "rounds": len(rounds),
            "by_method": collections.Counter(m for m, _ in rounds),
        }


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--process_id", type=int, required=True)
    p.add_argument("--num_processes", type=int, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--directory", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    import jax

    jax.config.update("jax_num_cpu_devices", 1)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{args.port}", args.num_processes, args.process_id)
    import keras
    import numpy as np
    from jax._src import distributed

    import checkpointing

    keras.distribution.set_distribution(
        keras.distribution.DataParallel(devices=jax.devices(), auto_shard_dataset=False)
    )
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=(4,))
    model = keras.Model(inputs, keras.layers.Dense(2, name="dense")(inputs))
    model.compile(optimizer="adam", loss="mse")
    model.build((None, 4))
    local = 2  # Samples per process per step: this process' slice of the global batch.

    def batches():
        rng = np.random.default_rng(args.process_id)
        while True:
            x = rng.random((local, 4), dtype=np.float32)
            yield x, x[:, :2]

    counter = CountingClient(distributed.global_state.client)
    distributed.global_state.client = counter
    try:
        callback = checkpointing.OrbaxCheckpoint(
            args.directory, save_freq=SAVE_FREQ, max_to_keep=2, barrier_timeout_s=120
        )
        counter.take()
        model.fit(batches(), steps_per_epoch=STEPS, epochs=1, verbose=0, callbacks=[callback])
        fit = counter.take()
        restored = checkpointing.restore_latest(args.directory, model, timeout_s=120)
        restore = counter.take()
    finally:
        distributed.global_state.client = counter._client
    result = {
        "process": args.process_id,
        "step": restored.step,
        "saves": STEPS // SAVE_FREQ,
        "fit": fit,
        "restore": restore,
    }
    (Path(args.out) / f"calls_p{args.process_id}.json").write_text(json.dumps(result))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
