"""The measuring phases of scripts/bench.py; every size and count comes in a `Plan`."""

from __future__ import annotations

import contextlib
import gc
import math
import os
import shutil
import statistics
import tempfile
import time
import traceback
from dataclasses import dataclass

_START = time.perf_counter()


def log(message: str) -> None:
    print(f"[bench {time.perf_counter() - _START:7.1f}s] {message}", flush=True)


@dataclass(frozen=True)
class Plan:
    """How much to measure: the flags of scripts/bench.py, as values."""

    rounds: int
    wide_saves: int
    fast_saves: int
    spacing: float
    growth_millions: tuple[float, ...]
    growth_rounds: int
    overhead_steps: int
    overhead_rounds: int
    depth: int
    batch_size: int


def calibrate(model, spec, x, y, variants_by_name, scratch, plan: Plan) -> dict:
    """Step time and one write's time, to space the saves of the two regimes."""
    from bench_core import TimedCallback
    from bench_run import run_fit

    steps = 6
    n = steps * spec.batch_size
    for _ in range(2):  # The first fit compiles; the second is timed.
        start = time.perf_counter()
        model.fit(
            x[:n],
            y[:n],
            batch_size=spec.batch_size,
            verbose=0,
            callbacks=[TimedCallback(None, None, 1)],
        )
    step_s = (time.perf_counter() - start) / steps
    writes = []
    for name in ("keras_orbax_sync", "podfit", "keras_orbax_bg"):
        v = variants_by_name.get(name)
        if v is None or v.unavailable:
            continue
        d = tempfile.mkdtemp(prefix=f"cal_{name}_", dir=scratch)
        r = run_fit(v, model, x, y, steps=2, save_freq=1, batch_size=spec.batch_size, directory=d)
        seen = r["write_s"] or r["blocked_s"]
        if seen:  # A variant that landed no save says nothing about a write.
            writes.append(statistics.median(seen))
        shutil.rmtree(d)
    # The slowest variant's write: the wide regime is wider than every variant's.
    write_s = max(writes) if writes else step_s
    wide = max(2, math.ceil(plan.spacing * write_s / step_s))
    fast = 1
    return {"step_s": step_s, "write_s": write_s, "wide_freq": wide, "fast_freq": fast}


def checkpoint_rounds(model, spec, x, y, variants, cal, scratch, results, plan: Plan) -> None:
    """Every variant once per round, both regimes, restores and raw disk figures."""
    from bench_core import block_until_ready
    from bench_run import RawDisk, measure_restore, run_fit, tensorstore_floor

    raw = RawDisk(scratch)
    regimes = {
        "wide": (cal["wide_freq"], plan.wide_saves),
        "fast": (cal["fast_freq"], plan.fast_saves),
    }
    for r in range(plan.rounds):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        rnd = {
            "raw_write_s": [],
            "raw_write_new_s": [],
            "raw_read_s": [],
            "raw_bytes": spec.state_bytes,
        }
        for regime, (freq, saves) in regimes.items():
            rnd[regime] = {}
            for v in order:
                if v.unavailable:
                    continue
                d = os.path.join(scratch, f"r{r}_{regime}_{v.name}")
                with _podfit_failure_reported(v, model, results):
                    fit = run_fit(
                        v, model, x, y, steps=freq * saves, save_freq=freq,
                        batch_size=spec.batch_size, directory=d,
                    )  # fmt: skip
                    if regime == "wide" and v.restore is not None:
                        fit["restore_s"] = measure_restore(v, d, model)
                        if "resharded" in results and v.name in ("podfit", "keras_orbax_bg"):
                            target = results["resharded"]["model"]
                            fit["restore_resharded_s"] = measure_restore(v, d, target)
                    if regime == "wide" and v.name == "podfit":
                        # podfit's own layout (uncompressed); Keras' is zstd.
                        rnd["floor"] = tensorstore_floor(d, scratch)
                shutil.rmtree(d, ignore_errors=True)
                if v.unavailable:
                    continue
                rnd[regime][v.name] = fit
                log(
                    f"round {r} {regime:4s} {v.name:18s} fit {fit['fit_s']:.2f}s "
                    f"saves {fit['saves_started']}/{fit['saves_landed']}"
                )
            rnd["raw_write_s"].append(raw.write(spec.state_bytes))
            rnd["raw_write_new_s"].append(raw.write_new(spec.state_bytes))
            rnd["raw_read_s"].append(raw.read(spec.state_bytes))
        block_until_ready(model)
        results["rounds"].append(rnd)
    raw.remove()
    for v in variants:
        if v.unavailable:  # Failed in some round: its figures from earlier rounds go too.
            for rnd in results["rounds"]:
                rnd["wide"].pop(v.name, None)
                rnd["fast"].pop(v.name, None)


@contextlib.contextmanager
def _podfit_failure_reported(variant, model, results):
    """Turns a failure of podfit's callback (developed alongside) into a reported gap.

    The traceback is printed and the variant is marked not measured, with the
    error, in the output, the JSON and the doc; the Keras variants still run.
    A failure of any other variant is a harness bug and propagates.
    """
    try:
        yield
    except Exception as e:
        if variant.name != "podfit":
            raise
        traceback.print_exc()
        variant.unavailable = f"failed at run time: {e!r}"[:500]
        results["variants"][variant.name]["unavailable"] = variant.unavailable
        log(f"variant {variant.name} NOT MEASURED: {variant.unavailable}")
        model.jax_state_sync()  # Reattach the latest state the failed fit left behind.


def resharded_model(spec):
    """The same MLP built under ModelParallel over 2 devices (kernels split on 'model')."""
    import jax
    import keras
    from bench_core import build_model

    if len(jax.devices()) < 2:
        return None, f"only {len(jax.devices())} device(s): no other mesh layout to restore onto"
    devices = jax.devices()[:2]
    mesh = keras.distribution.DeviceMesh((1, 2), ["batch", "model"], devices)
    layout = keras.distribution.LayoutMap(mesh)
    layout[".*dense.*kernel"] = (None, "model")
    layout[".*dense.*bias"] = ("model",)
    dist = keras.distribution.ModelParallel(layout_map=layout, batch_dim_name="batch")
    with dist.scope():
        model = build_model(spec, seed=1)
    return model, "ModelParallel mesh (batch=1, model=2): Dense kernels split by column"


def launcher_overhead(model, spec, x, y, plan: Plan) -> dict:
    """Per-step seconds of a plain Keras fit and of the raw jax.jit loop, alternated."""
    from bench_jax import RawLoop, keras_fit_seconds

    n = plan.overhead_steps * spec.batch_size
    xs, ys = x[:n], y[:n]
    loop = RawLoop(model, learning_rate=float(model.optimizer.learning_rate))
    loop.run(xs, ys, spec.batch_size)  # Compiles.
    keras_fit_seconds(model, xs, ys, spec.batch_size)
    keras_s, raw_s = [], []
    for r in range(plan.overhead_rounds):
        # Alternate which runs first, so neither always follows the other.
        for which in ("keras", "raw") if r % 2 == 0 else ("raw", "keras"):
            if which == "keras":
                keras_s.append(
                    keras_fit_seconds(model, xs, ys, spec.batch_size) / plan.overhead_steps
                )
            else:
                raw_s.append(loop.run(xs, ys, spec.batch_size) / plan.overhead_steps)
    log(f"launcher overhead: keras {min(keras_s) * 1e3:.1f} ms/step, raw {min(raw_s) * 1e3:.1f}")
    return {"keras_step_s": keras_s, "raw_step_s": raw_s, "steps": plan.overhead_steps}


def growth(variants, scratch, results, plan: Plan) -> list[dict]:
    """One save and one restore per size and round, podfit and Keras Orbax (background).

    The order alternates from round to round, so with an even number of
    rounds each variant runs first equally often: the first save and restore
    after the previous size (or after the raw disk figures) run into memory
    freed a while ago, which is far slower on the VM the figures in
    docs/benchmarks.md come from.
    """
    import jax
    from bench_core import build_model, make_data, model_spec
    from bench_run import RawDisk, measure_restore, run_fit

    chosen = [v for v in variants if v.name in ("podfit", "keras_orbax_bg")]
    out = []
    for size in plan.growth_millions:
        spec = model_spec(float(size), plan.depth, plan.batch_size)
        model = build_model(spec)
        x, y = make_data(spec, 2)
        model.fit(x, y, batch_size=spec.batch_size, verbose=0)  # Compiles.
        raw = RawDisk(scratch)
        entry = {
            "param_millions": float(size),
            "params": spec.params,
            "state_bytes": spec.state_bytes,
        }
        entry["raw_write_s"], entry["raw_read_s"] = [], []
        for v in chosen:
            entry[v.name] = []
        for r in range(plan.growth_rounds):
            for v in chosen[r % 2 :] + chosen[: r % 2]:
                if v.unavailable:
                    continue
                d = os.path.join(scratch, f"g{size}_{r}_{v.name}")
                with _podfit_failure_reported(v, model, results):
                    fit = run_fit(
                        v, model, x, y, steps=2, save_freq=2, batch_size=spec.batch_size,
                        directory=d,
                    )  # fmt: skip
                    fit["restore_s"] = measure_restore(v, d, model)
                    entry[v.name].append(fit)
                shutil.rmtree(d, ignore_errors=True)
            entry["raw_write_s"].append(raw.write(spec.state_bytes))
            entry["raw_read_s"].append(raw.read(spec.state_bytes))
        raw.remove()
        log(f"growth {size}M params done")
        out.append(entry)
        del model, x, y
        gc.collect()
        jax.clear_caches()
    return out
