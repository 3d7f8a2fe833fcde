"""Smoke test of scripts/bench.py: a --quick run finishes and reports every variant.

No timing is asserted: the figures depend on the machine and its load. The
test checks that the harness ran every variant (or said why not), and that
every figure it reports is a finite number.
"""

import json
import math
import os
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(REPO_ROOT, "scripts", "bench.py")
VARIANTS = (
    "none",
    "podfit",
    "keras_orbax_bg",
    "keras_orbax_sync",
    "model_checkpoint",
    "backup_and_restore",
)
# Figures every checkpointing variant must report, per regime.
WIDE = (
    "blocked_per_save_s",
    "lost_per_save_s",
    "durable_after_fit_s",
    "train_end_s",
    "write_s",
    "write_vs_raw",
    "restore_s",
    "restore_vs_raw_read",
    "step_overhead_pct",
    "fit_s",
)
FAST = ("saves_due", "saves_landed", "blocked_per_save_s", "lost_per_save_s", "fit_s")


def _finite(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    doc = out / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nHand-written prose stays.\n")
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    env.pop("JAX_NUM_CPU_DEVICES", None)  # The harness picks its own device count.
    proc = subprocess.run(
        [
            sys.executable,
            BENCH,
            "--quick",
            f"--out={out}",
            f"--doc={doc}",
            f"--scratch={out / 'scratch'}",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    with open(out / "benchmarks.json") as f:
        results = json.load(f)
    return results, proc.stdout, doc.read_text()


def test_every_variant_is_reported_or_explained(quick_run):
    results, stdout, _ = quick_run
    assert set(results["variants"]) == set(VARIANTS)
    measured = results["summary"]["variants"]
    for name in VARIANTS:
        reason = results["variants"][name]["unavailable"]
        if reason:
            assert f"variant {name} NOT MEASURED" in stdout
            assert name not in measured
        else:
            assert name in measured, name


def test_figures_are_finite(quick_run):
    results, _, _ = quick_run
    measured = results["summary"]["variants"]
    assert _finite(measured["none"]["wide"]["fit_s"])
    assert _finite(measured["none"]["fast"]["fit_s"])
    for name, figures in measured.items():
        if name == "none":
            continue
        for key in WIDE:
            assert _finite(figures["wide"][key]), (name, "wide", key, figures["wide"][key])
        for key in FAST:
            assert _finite(figures["fast"][key]), (name, "fast", key, figures["fast"][key])
        assert figures["fast"]["saves_landed"] >= 1, name
        assert figures["fast_behaviour"], name
    summary = results["summary"]
    assert _finite(summary["raw_write_Bps"]) and _finite(summary["raw_read_Bps"])
    assert _finite(summary["raw_write_new_Bps"])
    assert _finite(measured["podfit"]["wide"]["write_vs_raw_new"])
    assert _finite(summary["launcher_overhead"]["ratio"])
    assert len(summary["growth"]) == 2
    for row in summary["growth"]:
        for name in ("podfit", "keras_orbax_bg"):
            if name in measured:
                for key in ("blocked_s", "write_s", "restore_s", "restore_vs_raw_read"):
                    assert _finite(row[name][key]), (row["param_millions"], name, key)


def test_tensorstore_floor_reads_and_writes_the_whole_state_every_round(quick_run):
    results, _, doc = quick_run
    state = results["model"]["state_bytes"]
    for rnd in results["rounds"]:
        floor = rnd["floor"]
        # The model state plus the two scalar loss-metric variables, nothing else.
        assert state <= floor["bytes"] <= state + 64, (floor["bytes"], state)
        assert _finite(floor["read_s"]) and floor["read_s"] > 0
        assert _finite(floor["write_s"]) and floor["write_s"] > 0
    summary = results["summary"]
    for key in ("write_vs_raw", "restore_vs_raw_read", "lost_vs_keras_bg"):
        assert _finite(summary["floor"][key]), key
        assert summary["targets"][key]["floor"] == summary["floor"][key]
    assert "bound from TensorStore alone" in doc


def test_doc_keeps_prose_and_gets_one_generated_section(quick_run):
    _, _, doc = quick_run
    assert doc.startswith("# Benchmarks\n\nHand-written prose stays.")
    assert doc.count("<!-- bench:begin") == 1 and doc.count("<!-- bench:end -->") == 1
    assert "#### Targets" in doc


def test_rerun_replaces_the_generated_section(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(REPO_ROOT, "scripts"))
    import bench_markdown
    from bench_report import BEGIN, END

    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"intro\n{BEGIN}\nold\n{END}\noutro\n")
    bench_markdown.write_doc(str(doc), f"{BEGIN}\nnew 1\n{END}")
    bench_markdown.write_doc(str(doc), f"{BEGIN}\nnew 2\n{END}")
    assert doc.read_text() == f"intro\n{BEGIN}\nnew 2\n{END}\noutro\n"


@pytest.mark.multiprocess
def test_two_simulated_processes_report_saves_and_restores(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(REPO_ROOT, "scripts"))
    import bench_multiproc

    out = bench_multiproc.measure(
        [1, 2],
        0.25,
        ["keras_orbax_bg"],
        depth=2,
        batch_size=8,
        saves=2,
        save_every=2,
        rounds=2,
        scratch=str(tmp_path),
        timeout_s=300,
    )
    for n in ("1", "2"):
        procs = out["runs"][n]
        assert isinstance(procs, list), procs
        assert len(procs) == int(n)
        for p in procs:
            rounds = p["keras_orbax_bg"]
            assert len(rounds) == len(p["none"]) == 2, p
            for fit in rounds:
                assert fit["saves_landed"] == 2, fit
                assert all(_finite(b) for b in fit["blocked_s"]) and _finite(fit["restore_s"])
    import bench_report

    rows = bench_report._multiprocess_rows(out)
    assert [r["processes"] for r in rows] == [1, 2]
    for row in rows:
        figures = row["keras_orbax_bg"]
        assert figures["rounds"] == 2 and figures["saves_landed"] == 2, figures
        assert all(_finite(figures[k]) for k in ("blocked_per_save_s", "write_s", "restore_s"))
