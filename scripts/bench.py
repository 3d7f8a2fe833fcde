"""Checkpointing and launcher-overhead benchmark: podfit against the Keras callbacks.

Runs every checkpoint variant on the same model and data, interleaved round by
round, and reports medians over the rounds: time the training thread is
blocked per save, fit time lost per save (saves spaced wider than a write, and
saves coming faster than the disk takes them), time until the last save is
durable after `fit` returns, write throughput against a raw write + fsync of
the same bytes, restore time against a raw read, and step overhead. Also the
Keras `fit` step against a hand-written `jax.jit` step, and how save and
restore times grow with the model state.

Usage:
  python scripts/bench.py                        # default sizes, <= 10 min on 2 CPU cores
  python scripts/bench.py --quick --out=/tmp/b --doc=   # ~1 min smoke run
  python scripts/bench.py --param_millions=335 --growth_millions=84,335,1340  # on a GPU host

Writes <out>/benchmarks.json and replaces the generated section of --doc.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")
# Two CPU devices give the restore onto another mesh layout something to shard
# over; the flag only affects the CPU platform.
os.environ.setdefault("JAX_NUM_CPU_DEVICES", "2")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import gc  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from absl import app, flags, logging  # noqa: E402

_PARAM_MILLIONS = flags.DEFINE_float("param_millions", 16.0, "Model size in millions of params.")
_DEPTH = flags.DEFINE_integer("depth", 4, "Dense layers in the MLP (width follows from size).")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Batch size of every fit step.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Rounds; each runs every variant once.")
_WIDE_SAVES = flags.DEFINE_integer("wide_saves", 3, "Saves per fit, saves spaced wide.")
_FAST_SAVES = flags.DEFINE_integer("fast_saves", 6, "Saves per fit, saves faster than disk.")
_SPACING = flags.DEFINE_float(
    "spacing", 3.0, "Wide regime: seconds between saves, as a multiple of one write."
)
_GROWTH = flags.DEFINE_list("growth_millions", ["4", "16", "64"], "Sizes for the growth table.")
_GROWTH_ROUNDS = flags.DEFINE_integer(
    "growth_rounds", 4, "Rounds per growth size (even: each variant runs first as often)."
)
_OVERHEAD_STEPS = flags.DEFINE_integer("overhead_steps", 100, "Steps per launcher-overhead run.")
_OVERHEAD_ROUNDS = flags.DEFINE_integer("overhead_rounds", 7, "Launcher-overhead rounds.")
_PROCESSES = flags.DEFINE_list(
    "processes", ["1", "2", "4"], "Simulated process counts (localhost); empty: skip."
)
_MP_MILLIONS = flags.DEFINE_float("mp_param_millions", 4.0, "Params per process, millions.")
_MP_SAVE_EVERY = flags.DEFINE_integer("mp_save_every", 20, "Multi-process: steps between saves.")
_MP_SAVES = flags.DEFINE_integer("mp_saves", 2, "Multi-process: saves per fit.")
_MP_ROUNDS = flags.DEFINE_integer("mp_rounds", 3, "Multi-process: rounds per process count.")
_VARIANTS = flags.DEFINE_list("variants", [], "Variants to run (default: all).")
_QUICK = flags.DEFINE_bool("quick", False, "Small sizes, few rounds: a ~1 minute smoke run.")
_OUT = flags.DEFINE_string("out", os.path.join(REPO_ROOT, "docs"), "Folder for benchmarks.json.")
_DOC = flags.DEFINE_string(
    "doc",
    os.path.join(REPO_ROOT, "docs", "benchmarks.md"),
    "Markdown file whose generated section is replaced; empty: none.",
)
_SCRATCH = flags.DEFINE_string(
    "scratch", os.path.join(REPO_ROOT, "runs", "bench"), "Folder for checkpoints (same disk)."
)
_FROM_JSON = flags.DEFINE_string(
    "from_json", "", "Measure nothing: summarize and render an earlier run's benchmarks.json."
)
_NOTE = flags.DEFINE_string("note", "", "Free text stored with the run (e.g. concurrent load).")
_KEEP_FREED = flags.DEFINE_bool(
    "keep_freed_memory",
    True,
    "Apply the launcher's allocator setting (launcher/allocator.py) to this process and the "
    "multi-process workers, as `python -m launcher.main` does; every variant runs under it.",
)

_QUICK_VALUES = {
    "param_millions": 1.0,
    "rounds": 2,
    "wide_saves": 2,
    "fast_saves": 3,
    "growth_millions": ["0.25", "1"],
    "growth_rounds": 1,
    "overhead_steps": 10,
    "overhead_rounds": 2,
    "processes": [],
    "mp_param_millions": 0.5,
    "mp_save_every": 3,
    "mp_rounds": 1,
}


def _apply_quick() -> None:
    for name, value in _QUICK_VALUES.items():
        if not flags.FLAGS[name].present:
            flags.FLAGS[name].value = value


def _validate() -> None:
    checks = {
        "param_millions": _PARAM_MILLIONS.value > 0,
        "rounds": _ROUNDS.value >= 1,
        "wide_saves": _WIDE_SAVES.value >= 1,
        "fast_saves": _FAST_SAVES.value >= 1,
        "batch_size": _BATCH.value >= 1,
        "spacing": _SPACING.value > 1,
    }
    for name, ok in checks.items():
        if not ok:
            sys.stderr.write(
                f"bench: --{name} is out of range. Received: {flags.FLAGS[name].value}\n"
            )
            sys.exit(2)


def _multiprocess(variants, scratch: str) -> dict:
    import bench_multiproc
    from bench_phases import log

    if not _PROCESSES.value:
        return {"measured": False, "why": "not requested (--processes is empty)"}
    counts = [int(n) for n in _PROCESSES.value]
    names = [
        v.name for v in variants if v.name in ("podfit", "keras_orbax_bg") and not v.unavailable
    ]
    out = bench_multiproc.measure(
        counts, _MP_MILLIONS.value, names, depth=_DEPTH.value, batch_size=_BATCH.value,
        saves=_MP_SAVES.value, save_every=_MP_SAVE_EVERY.value, rounds=_MP_ROUNDS.value,
        keep_freed_memory=_KEEP_FREED.value,
        scratch=os.path.join(scratch, "multiprocess"), timeout_s=300 * _MP_ROUNDS.value,
    )  # fmt: skip
    log(f"multi-process runs done: {sorted(out['runs'])}")
    return out


def main(argv) -> None:
    del argv
    # Orbax logs every save at INFO; printing that would be part of what is timed.
    logging.set_verbosity(logging.WARNING)
    if _FROM_JSON.value:
        with open(_FROM_JSON.value) as f:
            _report(json.load(f))
        return
    if _QUICK.value:
        _apply_quick()
    _validate()
    memory = "allocator unchanged (--nokeep_freed_memory)"
    if _KEEP_FREED.value:
        from launcher import allocator

        memory = allocator.keep_freed_memory()
    import bench_report
    from bench_core import build_model, make_data, model_spec
    from bench_phases import (
        Plan,
        calibrate,
        checkpoint_rounds,
        growth,
        launcher_overhead,
        log,
        resharded_model,
    )
    from bench_variants import variants

    spec = model_spec(_PARAM_MILLIONS.value, _DEPTH.value, _BATCH.value)
    plan = Plan(
        rounds=_ROUNDS.value,
        wide_saves=_WIDE_SAVES.value,
        fast_saves=_FAST_SAVES.value,
        spacing=_SPACING.value,
        growth_millions=tuple(float(m) for m in _GROWTH.value),
        growth_rounds=_GROWTH_ROUNDS.value,
        overhead_steps=_OVERHEAD_STEPS.value,
        overhead_rounds=_OVERHEAD_ROUNDS.value,
        depth=_DEPTH.value,
        batch_size=_BATCH.value,
    )
    all_variants = variants()
    if _VARIANTS.value:
        known = {v.name for v in all_variants}
        unknown = sorted(set(_VARIANTS.value) - known)
        if unknown:
            sys.stderr.write(
                f"bench: --variants has unknown names {unknown}. Known: {sorted(known)}\n"
            )
            sys.exit(2)
        all_variants = [v for v in all_variants if v.name in _VARIANTS.value or v.name == "none"]
    else:
        all_variants = [v for v in all_variants if not v.opt_in]
    for v in all_variants:
        if v.unavailable:
            log(f"variant {v.name} NOT MEASURED: {v.unavailable}")
    runnable = [v for v in all_variants if not v.unavailable]
    os.makedirs(_SCRATCH.value, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="bench_", dir=_SCRATCH.value)
    results = {
        "meta": bench_report.machine_info(scratch),
        "flags": {name: flags.FLAGS[name].value for name in _flag_names()},
        "model": {
            "width": spec.width,
            "depth": spec.depth,
            "batch_size": spec.batch_size,
            "params": spec.params,
            "state_bytes": spec.state_bytes,
        },
        "variants": {
            v.name: {
                "label": v.label,
                "unavailable": v.unavailable,
                "background": v.background,
                **v.extra,
            }
            for v in all_variants
        },
        "rounds": [],
    }
    results["meta"]["note"] = _NOTE.value
    results["meta"]["allocator"] = memory
    results["meta"]["command"] = shlex.join(["python", "scripts/bench.py", *sys.argv[1:]])
    results["meta"]["date"] = time.strftime("%Y-%m-%d %H:%M")
    try:
        log(f"model: {spec.params / 1e6:.1f}M params, {spec.state_bytes / 2**20:.0f} MiB state")
        model = build_model(spec)
        x, y = make_data(spec, 64)
        resharded, how = resharded_model(spec)
        results["resharded_layout"] = how
        if resharded is not None:
            results["resharded"] = {"model": resharded}
        cal = calibrate(model, spec, x, y, {v.name: v for v in runnable}, scratch, plan)
        results["calibration"] = cal
        log(f"calibration: {cal}")
        need = max(cal["wide_freq"] * _WIDE_SAVES.value, cal["fast_freq"] * _FAST_SAVES.value)
        if need > len(x) // spec.batch_size:
            x, y = make_data(spec, need)
        checkpoint_rounds(model, spec, x, y, runnable, cal, scratch, results, plan)
        results.pop("resharded", None)
        results["launcher_overhead"] = launcher_overhead(model, spec, x, y, plan)
        del model, x, y, resharded
        gc.collect()
        results["growth"] = growth(runnable, scratch, results, plan)
        results["multiprocess"] = _multiprocess(runnable, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    results["meta"]["loadavg_end"] = os.getloadavg()
    _report(results)


def _report(results: dict) -> None:
    """Medians and targets, then the JSON, the plot and the markdown."""
    import bench_markdown
    import bench_report
    from bench_phases import log

    results["summary"] = bench_report.summarize(results)
    os.makedirs(_OUT.value, exist_ok=True)
    png = os.path.join(_OUT.value, "benchmarks.png")
    results["plot"] = bench_markdown.plot(results["summary"], png)
    if os.path.exists(png) and results["plot"].startswith("`"):
        # An image the page shows, linked relative to the page.
        where = os.path.dirname(os.path.abspath(_DOC.value)) if _DOC.value else _OUT.value
        results["plot"] = f"![per-save cost and growth]({os.path.relpath(png, where)})"
    json_path = os.path.join(_OUT.value, "benchmarks.json")
    with open(json_path, "w") as f:
        json.dump(results, f, indent=1, default=float)
    log(f"wrote {json_path}; plot: {results['plot']}")
    markdown = bench_markdown.markdown(results)
    print(markdown)
    if _DOC.value:
        bench_markdown.write_doc(_DOC.value, markdown)
        log(f"updated {_DOC.value}")


def _flag_names() -> list[str]:
    return [
        "param_millions", "depth", "batch_size", "rounds", "wide_saves", "fast_saves",
        "spacing", "growth_millions", "growth_rounds", "overhead_steps", "overhead_rounds",
        "variants", "quick", "processes", "mp_param_millions", "mp_save_every", "mp_saves", "mp_rounds", "keep_freed_memory",
    ]  # fmt: skip


if __name__ == "__main__":
    app.run(main)
