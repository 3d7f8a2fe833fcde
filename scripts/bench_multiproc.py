"""1, 2 and 4 simulated processes at fixed bytes per process, for scripts/bench.py.

The parent starts N copies of this file with `--worker` on localhost (one CPU
device each, gloo collectives, jax.distributed through a coordinator on a
free port), as scripts/simulate.py does for the launcher. Every worker builds
the MLP under a ModelParallel mesh of the N devices, kernels split by column,
so each process holds the same number of bytes whatever N is, then runs the
same measured `fit` as the single-process rounds (bench_run.run_fit) for the
no-checkpoint baseline and each checkpoint variant, and a restore, `--rounds`
times in an order rotated from round to round.

The N processes share this machine's cores: with N above the core count the
step time grows with N, so compare save and restore figures across N, not
step times.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)


def measure(
    counts: list[int],
    param_millions_per_process: float,
    variant_names: list[str],
    *,
    depth: int,
    batch_size: int,
    saves: int,
    save_every: int,
    rounds: int = 1,
    keep_freed_memory: bool = True,
    scratch: str,
    timeout_s: float,
) -> dict:
    """Runs the workers for every process count; returns their figures by count."""
    import portpicker

    out = {
        "measured": True,
        "param_millions_per_process": param_millions_per_process,
        "rounds": rounds,
        "runs": {},
    }
    for n in counts:
        port = portpicker.pick_unused_port()
        run_dir = os.path.join(scratch, f"mp{n}")
        os.makedirs(run_dir, exist_ok=True)
        env = {
            **os.environ,
            "KERAS_BACKEND": "jax",
            "JAX_PLATFORMS": "cpu",
            "JAX_NUM_CPU_DEVICES": "1",
            "PODFIT_KEEP_FREED_MEMORY": "1" if keep_freed_memory else "0",
            "PYTHONPATH": os.pathsep.join([HERE, REPO_ROOT, os.environ.get("PYTHONPATH", "")]),
        }
        procs, logs = [], []
        for i in range(n):
            log = open(os.path.join(run_dir, f"p{i}.log"), "w")  # noqa: SIM115
            logs.append(log)
            cmd = [
                sys.executable, os.path.abspath(__file__), "--worker",
                f"--coordinator=localhost:{port}", f"--num_processes={n}", f"--process_id={i}",
                f"--param_millions={param_millions_per_process * n}", f"--depth={depth}",
                f"--batch_size={batch_size}", f"--saves={saves}", f"--save_every={save_every}",
                f"--variants={','.join(variant_names)}", f"--directory={run_dir}",
                f"--rounds={rounds}",
                f"--out={os.path.join(run_dir, f'p{i}.json')}",
            ]  # fmt: skip
            procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
        codes = _wait_all(procs, timeout_s)
        for log in logs:
            log.close()
        if any(codes):
            tail = _tail(os.path.join(run_dir, f"p{codes.index(next(c for c in codes if c))}.log"))
            out["runs"][str(n)] = {"error": f"exit codes {codes}", "log_tail": tail}
            continue
        per_process = []
        for i in range(n):
            with open(os.path.join(run_dir, f"p{i}.json")) as f:
                per_process.append(json.load(f))
        out["runs"][str(n)] = per_process
    return out


def _wait_all(procs, timeout_s: float) -> list[int]:
    """Waits for every process; the first failure or the timeout stops the rest."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        codes = [p.poll() for p in procs]
        if all(c is not None for c in codes) or any(c not in (None, 0) for c in codes):
            break
        time.sleep(0.1)
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return [p.returncode for p in procs]


def _tail(path: str, n: int = 3000) -> str:
    with open(path) as f:
        return f.read()[-n:]


# --------------------------------------------------------------------------- worker


def _worker(args) -> None:
    from launcher import allocator  # Honours PODFIT_KEEP_FREED_MEMORY, set by the parent.

    allocator.keep_freed_memory()
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if args.num_processes > 1:
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    import keras
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    from bench_core import build_model, make_data, model_spec
    from bench_run import measure_restore, run_fit
    from bench_variants import variants

    n = args.num_processes
    spec = model_spec(args.param_millions, args.depth, args.batch_size)
    # Every kernel column block must split evenly over the N devices.
    spec = dataclasses.replace(spec, width=spec.width - spec.width % (8 * n))
    mesh = keras.distribution.DeviceMesh((1, n), ["batch", "model"], jax.devices())
    layout = keras.distribution.LayoutMap(mesh)
    layout[".*dense.*kernel"] = (None, "model")
    layout[".*dense.*bias"] = ("model",)
    # The batch axis has size 1: every process feeds the same whole batch.
    dist = keras.distribution.ModelParallel(
        layout_map=layout, batch_dim_name="batch", auto_shard_dataset=False
    )
    wanted = {"none", *args.variants.split(",")}
    chosen = [v for v in variants() if v.name in wanted and not v.unavailable]
    steps = args.saves * args.save_every
    x, y = make_data(spec, steps)  # Same seed everywhere: every process feeds the same batch.
    results = {
        "process_id": args.process_id,
        "params": spec.params,
        "state_bytes": spec.state_bytes,
    }
    with dist.scope():
        model = build_model(spec)
        model.fit(x, y, batch_size=spec.batch_size, verbose=0)  # Compiles.
        for r in range(args.rounds):
            # Every process runs the same order (they meet in collectives); the
            # order rotates from round to round, as in the single-process rounds.
            for v in chosen[r % len(chosen) :] + chosen[: r % len(chosen)]:
                directory = os.path.join(args.directory, f"r{r}_{v.name}")
                fit = run_fit(
                    v, model, x, y, steps=steps, save_freq=args.save_every,
                    batch_size=spec.batch_size, directory=directory,
                )  # fmt: skip
                if v.restore is not None:
                    fit["restore_s"] = measure_restore(v, directory, model)
                results.setdefault(v.name, []).append(fit)
    with open(args.out, "w") as f:
        json.dump(results, f)


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--worker", action="store_true", required=True)
    for name, kind in [
        ("coordinator", str), ("num_processes", int), ("process_id", int),
        ("param_millions", float), ("depth", int), ("batch_size", int), ("saves", int), ("save_every", int),
        ("variants", str), ("directory", str), ("out", str), ("rounds", int),
    ]:  # fmt: skip
        p.add_argument(f"--{name}", type=kind, required=True)
    return p.parse_args(argv)


if __name__ == "__main__":
    _worker(_parse(sys.argv[1:]))
