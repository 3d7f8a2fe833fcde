"""A real run, resumed once, read back with TensorBoard's EventAccumulator; a profile."""

import gzip
import json

import pytest

from tests.helpers import launcher, metrics, simulate
from tests.trainer.test_tensorboard import scalars

TINY = (
    "--config=configs/lm.py:tiny",  # 8 steps an epoch, log_every=2, 16 x 32 tokens a batch.
    "--num_cpu_devices=4",
    "--config.checkpoint.save_freq=4",
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One epoch, then a relaunch to a second one that profiles steps 10-11."""
    workdir = tmp_path_factory.mktemp("run")
    first = launcher(*TINY, f"--workdir={workdir}", "--config.trainer.epochs=1")
    assert first.returncode == 0, first.stderr[-3000:]
    second = launcher(
        *TINY,
        f"--workdir={workdir}",
        "--config.trainer.epochs=2",
        "--config.trainer.profile_steps=(10,11)",
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from step 8" in second.stderr
    return workdir


def test_event_files_hold_the_metrics_of_metrics_jsonl(run):
    train, validation = (
        scalars(run / "tensorboard" / "train"),
        scalars(run / "tensorboard" / "validation"),
    )
    assert len(list((run / "tensorboard" / "train").iterdir())) == 2  # One file per launch.
    records = metrics(run)
    lines = [m for m in records if "epoch" not in m]
    epochs = [m for m in records if "epoch" in m]
    assert [m["step"] for m in lines] == list(range(2, 17, 2))
    for key in ("loss", "accuracy", "learning_rate"):
        assert train[f"batch_{key}"] == [
            (m["step"], pytest.approx(m[key], rel=1e-6)) for m in lines
        ], key
        assert train[f"epoch_{key}"] == [
            (m["step"], pytest.approx(m[key], rel=1e-6)) for m in epochs
        ], key
    for key in ("loss", "accuracy"):
        assert validation[f"epoch_{key}"] == [
            (m["step"], pytest.approx(m[f"val_{key}"], rel=1e-6)) for m in epochs
        ], key
    # Each launch's first interval (compilation) is not measured; the rest are.
    times = dict(train["perf/step_time_s"])
    assert sorted(times) == [4, 6, 8, 12, 14, 16]
    for step, rate in train["perf/examples_per_s"]:
        assert rate == pytest.approx(16 / times[step], rel=1e-5)
    for step, rate in train["perf/tokens_per_s"]:
        assert rate == pytest.approx(16 * 32 / times[step], rel=1e-5)
    # Checkpoint events (checkpointing.events), at the saved and restored steps.
    assert [int(v) for _, v in train["checkpoint/committed_step"]] == [4, 8, 12, 16]
    assert [s for s, _ in train["checkpoint/committed_step"]] == [4, 8, 12, 16]
    assert [s for s, _ in train["checkpoint/blocked_ms"]] == [4, 8, 12, 16]
    assert all(v > 0 for _, v in train["checkpoint/bytes"])
    assert [s for s, _ in train["checkpoint/restore_s"]] == [8]


def test_profile_of_the_chosen_steps_is_written_and_parses(run):
    (trace_dir,) = (run / "profile" / "process_0" / "plugins" / "profile").iterdir()
    names = sorted(p.name for p in trace_dir.iterdir())
    assert any(n.endswith(".xplane.pb") for n in names), names
    assert "perfetto_trace.json.gz" in names, names
    for name in names:
        if name.endswith(".json.gz"):
            with gzip.open(trace_dir / name) as f:
                trace = json.load(f)
            assert len(trace["traceEvents"]) > 100, name
    # The step marks of the profiled steps (jax.profiler.StepTraceAnnotation).
    with gzip.open(trace_dir / "perfetto_trace.json.gz") as f:
        trace = json.load(f)["traceEvents"]
    marked = sorted(int(e["args"]["step_num"]) for e in trace if e.get("name") == "train")
    assert marked == [10, 11]


@pytest.mark.multiprocess
def test_every_process_profiles_into_its_own_folder_on_request(tmp_path):
    r = simulate(
        2,
        2,
        "--config=configs/lm.py:tiny",
        f"--workdir={tmp_path}",
        "--config.checkpoint.enabled=False",
        "--config.trainer.profile_steps=(2,3)",
        "--config.trainer.profile_all_processes=True",
    )
    assert r.returncode == 0, r.stdout[-3000:]
    for i in range(2):
        (trace_dir,) = (tmp_path / "profile" / f"process_{i}" / "plugins" / "profile").iterdir()
        assert any(p.name.endswith(".xplane.pb") for p in trace_dir.iterdir())
    assert len(list((tmp_path / "tensorboard" / "train").iterdir())) == 1  # Process 0's.
