"""The targets, and what a run writes: benchmarks.json, benchmarks.png, the doc's table."""

from __future__ import annotations

import json
import os
import platform
import time
from importlib import metadata

import jax

BEGIN = "<!-- bench:begin (written by scripts/bench.py; replaced on every run) -->"
END = "<!-- bench:end -->"
LABELS = {
    "podfit": "podfit `checkpointing.OrbaxCheckpoint`",
    "keras_bg": "Keras `OrbaxCheckpoint`, background",
    "keras_sync": "Keras `OrbaxCheckpoint`, sync",
    "orbax_manager": "Orbax `CheckpointManager`, by hand",
    "podfit_restore": "podfit `checkpointing.restore`",
    "keras": "Keras `load_weights`, the same step",
    "keras_own": "Keras `load_weights`, Keras' own step",
    "trainer_train": "`trainer.train`",
    "raw_loop": "raw `jax.jit` + optax loop",
}
QUESTIONS = {"save": "per save", "restore": "restore", "step": "per step"}


def machine() -> dict:
    """Date, CPU, memory, devices, load and library versions."""
    cpu = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":")[1].strip() for ln in f if ln.startswith("model name")), cpu)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": f"{cpu}, {os.cpu_count()} cores, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB, "
        f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        "versions": {"python": platform.python_version(), **{p: metadata.version(p) for p in ("jax", "keras", "orbax-checkpoint", "grain", "optax")}},
        "load_average": os.getloadavg(),
    }  # fmt: skip


def describe(config, model) -> str:
    params = sum(int(v.value.size) for v in model.trainable_variables)
    state = sum(v.value.nbytes for v in [*model.variables, *model.optimizer.variables])
    mesh = dict(model.trainable_variables[0].value.sharding.mesh.shape)
    return (
        f"LM {config.model.kwargs.num_layers} x {config.model.kwargs.embed_dim}, {params / 1e6:.1f}M params "
        f"({state / 2**20:.0f} MiB with AdamW), batch {config.data.global_batch_size} x "
        f"{config.data.kwargs.seq_len} tokens, mesh {mesh}"
    )


def targets(results: dict) -> list[dict]:
    save, restore, step = (results[q]["figures"] for q in QUESTIONS)
    rows = [
        ("blocked per save, podfit / Keras background", save["podfit"]["blocked"], save["keras_bg"]["blocked"], 0.2),
        ("lost per save, podfit / Orbax CheckpointManager", save["podfit"]["lost"], save["orbax_manager"]["lost"], 1.0),
        ("restore, podfit / Keras load_weights, same mesh", restore["podfit_restore"]["same mesh"], restore["keras"]["same mesh"], 1.1),
        ("restore, podfit / Keras load_weights, other mesh", restore["podfit_restore"]["other mesh"], restore["keras"]["other mesh"], 1.1),
        ("step, trainer.train / raw jax.jit + optax", step["trainer_train"]["step"], step["raw_loop"]["step"], 1.05),
    ]  # fmt: skip
    # "met" compares a with limit x b, which stays right when noise makes a figure negative.
    return [{"target": n, "ratio": a / b, "limit": k, "met": a <= k * b} for n, a, b, k in rows]


def markdown(results: dict, png: str) -> str:
    meta, flags = results["meta"], results["flags"]
    lines = [
        BEGIN, "", f"### Run of {meta['date']}", "",
        f"- machine: {meta['machine']}; load average at start "
        + ", ".join(f"{x:.2f}" for x in meta["load_average"]),
        "- versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        f"- command: `{meta['command']}` ({meta['seconds']:.0f} s)",
        f"- save and restore: {results['model']}; {results['save']['saves']} saves per fit, "
        f"every {results['save']['save_every']} steps; {flags['rounds']} rounds",
        f"- per step: {results['step']['model']}; {flags['step_steps']} steps per run after "
        f"{flags['step_warmup']}; {flags['step_rounds']} rounds", "",
    ]  # fmt: skip
    for question, title in QUESTIONS.items():
        figures = results[question]["figures"]
        columns = list(next(iter(figures.values())))
        lines += [f"| {title}, median (ms) | {' | '.join(columns)} |", "|---" * len(columns) + "|---|"]  # fmt: skip
        for name, row in figures.items():
            lines.append(f"| {LABELS[name]} | " + " | ".join(f"{row[c] * 1e3:.1f}" for c in columns) + " |")  # fmt: skip
        lines.append("")
    lines += ["| target (this run) | ratio | limit | met |", "|---|---|---|---|"]
    for t in results["targets"]:
        met = "yes" if t["met"] else "**no**"
        lines.append(f"| {t['target']} | {t['ratio']:.3f} | <= {t['limit']} | {met} |")
    return "\n".join([*lines, "", f"![per save, restore and per step]({png})", "", END])


def plot(results: dict, path: str) -> None:
    import matplotlib.pyplot as plt  # Without a display it draws with Agg.

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), width_ratios=(4, 3, 1.5))
    for ax, (question, title) in zip(axes, QUESTIONS.items(), strict=True):
        figures = results[question]["figures"]
        columns = list(next(iter(figures.values())))
        width = 0.8 / len(columns)
        for i, column in enumerate(columns):
            x = [j + width * (i - (len(columns) - 1) / 2) for j in range(len(figures))]
            ax.bar(x, [row[column] * 1e3 for row in figures.values()], width, label=column)
        ax.set_xticks(range(len(figures)), [name.replace("_", "\n") for name in figures])
        ax.set(title=f"{title} (ms)")
        ax.legend()
    fig.suptitle(f"scripts/bench.py, {results['meta']['date']}: medians over rounds")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write(results: dict, out: str, doc: str, log) -> None:
    """Adds the targets; writes the JSON, the plot and (if `doc`) the doc's table."""
    results["targets"] = targets(results)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "benchmarks.json"), "w") as f:
        json.dump(results, f, indent=1)
    png = os.path.join(out, "benchmarks.png")
    plot(results, png)
    table = markdown(results, os.path.relpath(png, os.path.dirname(os.path.abspath(doc or png))))
    print(table)
    if doc:  # The table replaces the one between the markers, or goes at the end.
        head, begin, rest = (open(doc).read() if os.path.exists(doc) else "").partition(BEGIN)
        with open(doc, "w") as f:
            f.write(head + table + (rest.partition(END)[2] if begin else "\n"))
    log(f"wrote {out}/benchmarks.json, {png}" + (f", {doc}" if doc else ""))
