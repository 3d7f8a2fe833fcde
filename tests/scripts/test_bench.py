"""A minimal run of scripts/bench.py reports every variant and figure of every question.

At these sizes the figures mean nothing, and no timing is asserted: the test checks that
each question ran all its variants and that each figure is a finite, positive number of
seconds, that the targets are computed, and what the run writes (JSON, PNG, doc table).
"""

import json
import math
import os
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(REPO_ROOT, "scripts", "bench.py")
MINIMAL = [
    "--param_millions=0.05", "--batch_size=2", "--seq_len=8", "--rounds=1", "--saves=2",
    "--save_every=2", "--step_param_millions=0.05", "--step_batch_size=2", "--step_seq_len=8",
    "--step_steps=4", "--step_warmup=2", "--step_rounds=1",
]  # fmt: skip
FIGURES = {
    "save": {
        name: ("blocked", "lost", "durable")
        for name in ("podfit", "keras_bg", "keras_sync", "orbax_manager")
    },
    "restore": {
        name: ("same mesh", "other mesh") for name in ("podfit_restore", "keras", "keras_own")
    },
    "step": {name: ("step",) for name in ("trainer_train", "raw_loop")},
}
BEGIN = "<!-- bench:begin (written by scripts/bench.py; replaced on every run) -->"
END = "<!-- bench:end -->"


def _env():
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    env.pop("JAX_NUM_CPU_DEVICES", None)  # The harness asks for 2 CPU devices.
    return env


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    doc = out / "benchmarks.md"
    doc.write_text(f"# Benchmarks\n\nWritten by hand.\n\n{BEGIN}\nan older run\n{END}\n\nAfter.\n")
    args = [f"--out={out}", f"--doc={doc}", f"--scratch={out / 'scratch'}"]
    proc = subprocess.run(
        [sys.executable, BENCH, *MINIMAL, *args],
        cwd=REPO_ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    with open(out / "benchmarks.json") as f:
        return json.load(f), out, doc.read_text()


def test_every_variant_and_figure_is_finite_and_positive(run):
    results, _, _ = run
    for question, variants in FIGURES.items():
        figures = results[question]["figures"]
        assert set(figures) == set(variants), (question, sorted(figures))
        for name, columns in variants.items():
            for column in columns:
                value = figures[name][column]
                assert math.isfinite(value) and value > 0, (question, name, column, value)


def test_saves_land_at_every_save_step_of_every_variant(run):
    results, _, _ = run
    for name, fits in results["save"]["fits"].items():
        assert len(fits) == 1, name  # --rounds=1
        if name != "none":
            assert fits[0]["saves"] == 2 and len(fits[0]["durable_s"]) == 2, (name, fits[0])


def test_targets_are_ratios_of_the_same_run(run):
    results, _, _ = run
    targets = results["targets"]
    assert len(targets) == 5
    for target in targets:
        assert math.isfinite(target["ratio"]) and target["ratio"] > 0, target
        assert isinstance(target["met"], bool)
    save = results["save"]["figures"]
    blocked = save["podfit"]["blocked"] / save["keras_bg"]["blocked"]
    assert targets[0]["ratio"] == pytest.approx(blocked)


def test_doc_table_replaces_the_older_one_and_keeps_the_prose(run):
    _, out, doc = run
    assert doc.startswith("# Benchmarks\n\nWritten by hand.\n\n")
    assert doc.endswith(f"{END}\n\nAfter.\n")
    assert doc.count(BEGIN) == 1 and "an older run" not in doc
    assert "| target (this run) | ratio | limit | met |" in doc
    assert (out / "benchmarks.png").read_bytes().startswith(b"\x89PNG")


def test_a_bad_size_exits_2_naming_the_flag():
    proc = subprocess.run(
        [sys.executable, BENCH, "--rounds=0", "--out=", "--doc="],
        cwd=REPO_ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "--rounds must be > 0. Received: 0" in proc.stderr
