"""Markdown tables (and a plot where matplotlib is installed) for scripts/bench.py."""

from __future__ import annotations

import os
import shlex
import sys
import time

from bench_report import BEGIN, END

_TARGET_TEXT = {
    "blocked_vs_keras_bg": "blocked per save, podfit / keras OrbaxCheckpoint (background)",
    "lost_vs_keras_bg": "fit time lost per save, podfit / keras OrbaxCheckpoint (background)",
    "write_vs_raw": "podfit background write throughput / raw write + fsync",
    "restore_vs_raw_read": "podfit restore time / raw read of the same bytes",
    "keras_step_vs_raw_jax": "Keras fit step / hand-written jax.jit step",
}


def _ms(seconds) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e3:.1f}"


def _x(ratio, digits=2) -> str:
    return "n/a" if ratio is None else f"{ratio:.{digits}f}x"


def _mbps(bps) -> str:
    return "n/a" if bps is None else f"{bps / 1e6:.0f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _targets(summary: dict) -> list[str]:
    rows = []
    for key, text in _TARGET_TEXT.items():
        t = summary["targets"].get(key)
        if t is None:
            rows.append([text, "not measured (podfit callback unavailable)", "", "—", "—"])
            continue
        higher = key == "write_vs_raw"
        limit = f"{'>=' if higher else '<='} {t['limit']:g}"
        floor = t.get("floor")
        bound = "—" if floor is None else f"{'<=' if higher else '>='} {floor:.4f}"
        if t["met"] is None:
            rows.append([text, "not measured", limit, "—", bound])
            continue
        verdict = _verdict(t["margin"], higher, t["met"])
        if floor is not None and not t["met"] and (floor < t["limit"]) == higher:
            verdict += "; the bound is past the limit too"
        rows.append([text, f"{t['value']:.4f}", limit, verdict, bound])
    header = ["target", "measured (median)", "limit", "verdict", "bound from TensorStore alone"]
    lines = _table(header, rows)
    floor = summary.get("floor")
    if floor:
        lines += [
            "",
            "Bound from TensorStore alone: the arrays of podfit's last step, read cold with "
            "plain `tensorstore` (no Orbax, no model) and written again with the same zarr3 "
            "metadata into a new OCDBT store on the same disk, on the idle process, once per "
            f"round ({_mbytes(floor['bytes'])} MB; medians: read {_ms(floor['read_s'])} ms, "
            f"write {_ms(floor['write_s'])} ms). Every writer of the Orbax format, which "
            "`keras.saving.load_model` reads, goes through TensorStore, so no such callback "
            "does better than these bounds on this machine: write throughput at most that "
            "fraction of the raw write, restore at least that multiple of the raw read, and "
            "fit time lost per save at least one TensorStore write of the state (the end of "
            "`fit` waits for the last write) divided by the saves per `fit`, against Keras' "
            "lost per save.",
        ]
    return lines


def _mbytes(nbytes) -> str:
    return "n/a" if nbytes is None else f"{nbytes / 1e6:.0f}"


def _verdict(margin: float, higher_is_better: bool, met: bool) -> str:
    """'met' or 'MISSED', and by how much, from margin = measured / limit."""
    if higher_is_better:
        if met:
            return f"met ({(margin - 1) * 100:.0f}% above the limit)"
        return f"MISSED (reaches {margin * 100:.0f}% of the limit)"
    if met:
        return f"met ({(1 - margin) * 100:.0f}% under the limit)"
    if margin < 2:
        return f"MISSED ({(margin - 1) * 100:.1f}% over the limit)"
    return f"MISSED ({margin:.1f}x the limit)"


def _wide(results: dict, summary: dict) -> list[str]:
    rows = []
    for name, s in summary["variants"].items():
        w = s["wide"]
        label = results["variants"][name]["label"]
        write = "—" if name == "none" else f"{_mbps(w['write_Bps'])} ({_pct(w['write_vs_raw'])})"
        restore = "—"
        if w["restore_s"] is not None:
            restore = f"{w['restore_s']:.3f} ({_x(w['restore_vs_raw_read'])})"
        resh = _x(w["restore_resharded_vs_raw_read"]) if w["restore_resharded_s"] else "—"
        rows.append([
            label,
            "—" if name == "none" else _ms(w["blocked_per_save_s"]),
            "—" if name == "none" else _ms(w["lost_per_save_s"]),
            "—" if name == "none" else _ms(w["train_end_s"]),
            "—" if name == "none" else _ms(w["durable_after_fit_s"]),
            write,
            restore,
            resh,
            "0 (baseline)" if name == "none"
            else f"{_signed(w['step_overhead_pct'])} / {_signed(w['step_overhead_mean_pct'])}",
        ])  # fmt: skip
    header = [
        "variant", "blocked / save (ms)", "fit time lost / save (ms)", "on_train_end (ms)",
        "durable after fit returns (ms)", "write MB/s (of raw)", "restore s (x raw read)",
        "restore onto other mesh (x raw read)", "step overhead between saves, median / mean (%)",
    ]  # fmt: skip
    return _table(header, rows)


def _fast(results: dict, summary: dict) -> list[str]:
    rows = []
    for name, s in summary["variants"].items():
        if name == "none":
            continue
        f = s["fast"]
        rows.append([
            results["variants"][name]["label"],
            f"{f['saves_due']:g}", f"{f['saves_landed']:g}",
            _ms(f["blocked_per_save_s"]), _ms(f["lost_per_save_s"]),
            _ms(f["train_end_s"]), _ms(f["durable_after_fit_s"]), s["fast_behaviour"],
        ])  # fmt: skip
    header = [
        "variant", "saves due", "saves landed", "blocked / save (ms)", "fit time lost / save (ms)",
        "on_train_end (ms)", "durable after fit returns (ms)", "what it does",
    ]  # fmt: skip
    return _table(header, rows)


def _growth(summary: dict) -> list[str]:
    rows = []
    prev = {}
    for g in summary["growth"]:
        for name in ("podfit", "keras_orbax_bg"):
            v = g.get(name)
            if v is None:
                continue
            grow = ""
            if name in prev:
                p = prev[name]
                grow = f"save x{_r(v['write_s'], p['write_s'])}, restore x{_r(v['restore_s'], p['restore_s'])}"
            prev[name] = v
            rows.append([
                f"{g['params'] / 1e6:.1f}M", f"{g['state_bytes'] / 2**20:.0f}", name,
                _ms(v["blocked_s"]), _ms(v["write_s"]), _ms(v["restore_s"]),
                _x(v["restore_vs_raw_read"]), _ms(g["raw_write_s"]), _ms(g["raw_read_s"]), grow,
            ])  # fmt: skip
    header = [
        "params", "state MiB", "variant", "blocked (ms)", "save to durable (ms)", "restore (ms)",
        "restore x raw read", "raw write (ms)", "raw read (ms)", "growth vs previous size",
    ]  # fmt: skip
    return _table(header, rows)


def _multiprocess(summary: dict) -> list[str]:
    rows, first = [], {}
    for row in summary["multiprocess"]:
        if "error" in row:
            rows.append([str(row["processes"]), "", "FAILED: " + row["error"], *[""] * 6])
            continue
        for name in ("podfit", "keras_orbax_bg"):
            v = row.get(name)
            if v is None:
                continue
            first.setdefault(name, v)
            f = first[name]
            rows.append([
                str(row["processes"]), f"{row['bytes_per_process'] / 2**20:.0f}", name,
                f"{v['saves_landed']}", _ms(v["blocked_per_save_s"]), _ms(v["lost_per_save_s"]),
                _ms(v["write_s"]), _ms(v["restore_s"]),
                f"save x{_r(v['write_s'], f['write_s'])}, restore x{_r(v['restore_s'], f['restore_s'])}",
            ])  # fmt: skip
    header = [
        "processes", "state MiB per process", "variant", "saves landed", "blocked / save (ms)",
        "fit time lost / save (ms)", "save to durable (ms)", "restore (ms)", "vs first row",
    ]  # fmt: skip
    return _table(header, rows)


def _r(a, b) -> str:
    return "n/a" if not a or not b else f"{a / b:.1f}"


def _pct(ratio) -> str:
    return "n/a" if ratio is None else f"{ratio * 100:.0f}%"


def _signed(pct) -> str:
    return "n/a" if pct is None else f"{pct:+.1f}"


def markdown(results: dict) -> str:
    """The generated section of docs/benchmarks.md."""
    s, meta, cal, model = (
        results["summary"],
        results["meta"],
        results["calibration"],
        results["model"],
    )
    n_rounds = len(results["rounds"])
    lines = [BEGIN, "", f"### Run of {meta.get('date') or time.strftime('%Y-%m-%d %H:%M')}", ""]
    lines += [
        f"- command: `{meta.get('command') or shlex.join(['python', 'scripts/bench.py', *sys.argv[1:]])}`",
        f"- machine: {meta['cpu']}, {meta['cores']} cores, {meta['ram_gib']} GiB RAM, "
        f"disk {meta['disk']} of {meta['disk_size_gib']} GiB, devices {meta['devices']}",
        f"- versions: python {meta['python']}, "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        f"- host allocator (every variant, this process and the workers): "
        f"{meta.get('allocator', 'not recorded')}",
        f"- load average at start {_load(meta['loadavg_start'])}, at end {_load(meta.get('loadavg_end') or os.getloadavg())}"
        + (f"; note: {meta['note']}" if meta.get("note") else "")
        + (
            "; **the machine was not idle when the run started** (other jobs share the cores), "
            "so absolute figures are noisier than on an idle machine"
            if meta["loadavg_start"][0] > 0.5
            else ""
        ),
        f"- model: MLP {model['depth']} x Dense({model['width']}), {model['params'] / 1e6:.1f}M fp32 "
        f"params, {model['state_bytes'] / 2**20:.0f} MiB of state with Adam, batch {model['batch_size']}",
        f"- calibration: step {_ms(cal['step_s'])} ms, slowest variant's write "
        f"{_ms(cal['write_s'])} ms -> wide regime saves every {cal['wide_freq']} steps, "
        f"fast regime every {cal['fast_freq']} step(s) "
        f"({cal['write_s'] / (cal['fast_freq'] * cal['step_s']):.1f} writes' time per save interval)",
        f"- {n_rounds} rounds, variants interleaved (order rotated each round); every figure is the "
        "median over rounds of a per-round value; ratios compare figures of the same round.",
        f"- raw disk (write + fsync / cold read, same bytes as the model state): "
        f"{_mbps(s['raw_write_Bps'])} / {_mbps(s['raw_read_Bps'])} MB/s",
    ]
    if s.get("raw_write_new_Bps"):
        pod = s["variants"].get("podfit", {}).get("wide", {}).get("write_vs_raw_new")
        lines.append(
            "- raw write + fsync into a new file, the previous one deleted after (as a checkpoint "
            f"is written and retention deletes): {_mbps(s['raw_write_new_Bps'])} MB/s"
            + ("" if pod is None else f"; podfit's background write reaches {_pct(pod)} of it")
        )
    for name, v in results["variants"].items():
        if v.get("unavailable"):
            lines.append(f"- **{name} not measured**: {v['unavailable']}")
        elif v.get("restore_api"):
            lines.append(f"- {name} restore measured with `{v['restore_api']}`")
    lines += ["", "#### Targets", "", *_targets(s), ""]
    lines += [
        f"#### Saves spaced wider than one write (every {cal['wide_freq']} steps, about "
        f"{cal['wide_freq'] * cal['step_s']:.2f} s of training)",
        "",
    ]
    lines += [*_wide(results, s), ""]
    spacing = cal["wide_freq"] * cal["step_s"]
    slowest = max(
        (v["wide"]["write_s"] or 0.0 for n, v in s["variants"].items() if n != "none"), default=0.0
    )
    lines += [
        f"Saves {spacing:.2f} s of training apart; the slowest median write took {slowest:.2f} s "
        f"({'wider than one write: yes' if spacing > slowest else 'NOT wider than every write'}).",
        "",
    ]
    lines += [
        f"#### Saves coming faster than the disk takes them (every {cal['fast_freq']} step)",
        "",
    ]
    lines += [*_fast(results, s), ""]
    lo = s.get("launcher_overhead")
    if lo:
        lines += [
            "#### Launcher overhead",
            "",
            f"Keras `fit` step {_ms(lo['keras_step_s'])} ms against a hand-written `jax.jit` "
            f"Adam step {_ms(lo['raw_step_s'])} ms: **{lo['ratio']:.3f}x** "
            f"({results['launcher_overhead']['steps']} steps per run, median of per-run ratios; "
            f"the per-run ratios range from {lo['ratio_min']:.3f} to {lo['ratio_max']:.3f}).",
            "",
        ]
    if s["growth"]:
        lines += ["#### Growth of save and restore with the model state", "", *_growth(s), ""]
    mp = results.get("multiprocess", {})
    lines += ["#### Simulated processes at fixed bytes per process", ""]
    if not mp.get("measured"):
        lines += [f"Not measured: {mp.get('why', 'not run')}.", ""]
    else:
        lines += [
            f"N processes on localhost (jax.distributed, gloo, one CPU device each), "
            f"{mp['param_millions_per_process']:g}M params per process, kernels split over the "
            f"N devices; {mp.get('rounds', 1)} round(s) per N, median over rounds of per-round "
            "figures. Blocked, lost and restore: the slowest process; save to durable: "
            "process 0. The N processes share the machine's cores.",
            "",
            *_multiprocess(s),
            "",
        ]
    lines += [f"Plot: {results.get('plot', 'none')}", "", END]
    return "\n".join(lines)


def _load(avg) -> str:
    return "/".join(f"{a:.2f}" for a in avg)


def write_doc(path: str, generated: str) -> None:
    """Replaces the text between the markers in `path` (appends it when they are absent)."""
    text = ""
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + generated + tail
    else:
        text = (text.rstrip() + "\n\n" if text else "# Benchmarks\n\n") + generated + "\n"
    with open(path, "w") as f:
        f.write(text)


def plot(summary: dict, path: str) -> str:
    """Writes a PNG (per-save blocked and lost time; growth); returns what happened, in words."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "not drawn: matplotlib is not installed in the venv (the harness installs nothing)"
    names = [n for n in summary["variants"] if n != "none"]
    blocked = [(summary["variants"][n]["wide"]["blocked_per_save_s"] or 0) * 1e3 for n in names]
    lost = [(summary["variants"][n]["wide"]["lost_per_save_s"] or 0) * 1e3 for n in names]
    growth = summary.get("growth") or []
    fig, axes = plt.subplots(1, 2 if growth else 1, figsize=(13 if growth else 8, 4.5))
    ax = axes[0] if growth else axes
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], blocked, 0.4, label="blocked / save")
    ax.bar([x + 0.2 for x in xs], lost, 0.4, label="fit time lost / save")
    ax.set_xticks(list(xs), names, rotation=20)
    ax.set_ylabel("ms (median over rounds)")
    ax.set_title("Per save, saves wider than a write")
    ax.legend()
    if growth:
        ax = axes[1]
        mib = [g["state_bytes"] / 2**20 for g in growth]
        ax.plot(mib, [g["raw_write_s"] for g in growth], "k--", label="raw write + fsync")
        ax.plot(mib, [g["raw_read_s"] for g in growth], "k:", label="raw read")
        for name in ("podfit", "keras_orbax_bg"):
            points = [(m, g[name]) for m, g in zip(mib, growth, strict=True) if g.get(name)]
            if points:
                ax.plot(
                    [m for m, _ in points], [v["write_s"] for _, v in points], "o-",
                    label=f"{name} save to durable",
                )  # fmt: skip
                ax.plot(
                    [m for m, _ in points], [v["restore_s"] for _, v in points], "s-",
                    label=f"{name} restore",
                )  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("model state (MiB)")
        ax.set_ylabel("s (median over rounds)")
        ax.set_title("Growth with the state size")
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return f"`{os.path.basename(path)}`"
