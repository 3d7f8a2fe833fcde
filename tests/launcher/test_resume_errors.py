"""Relaunching on a workdir that another model wrote: exit 2, one line naming every difference."""

import re

import pytest

from tests.helpers import committed_steps, launcher, launcher_logs, reaped, start_launchers

# absl's log lines, and the start line process 0 shows before training.
LOG_LINE = re.compile(r"^(\[p\d+\] )?([IWEF]\d{4} |podfit: \d+ steps of )")
MLP = ("--config=configs/mlp.py:tiny", "--num_cpu_devices=1")


def test_checkpoint_of_a_different_model_exits_2_with_one_line(tmp_path):
    r = launcher(*MLP, f"--workdir={tmp_path}")
    assert r.returncode == 0, r.stderr[-3000:]
    (step,) = committed_steps(tmp_path)[-1:]

    wider = launcher(*MLP, f"--workdir={tmp_path}", "--config.model.kwargs.hidden_sizes=(48,)")
    assert wider.returncode == 2, wider.stderr[-3000:]
    assert "Traceback" not in wider.stderr
    lines = [line for line in wider.stderr.splitlines() if line.startswith("launcher:")]
    assert len(lines) == 1, wider.stderr[-3000:]
    (line,) = lines
    # Everything else on stderr is log lines (warnings, the start line), no second message.
    others = [x for x in wider.stderr.splitlines() if x.strip() and x != line]
    assert all(LOG_LINE.match(x) for x in others), others
    assert f"checkpoint {tmp_path}/checkpoints/{step} is from a different model" in line
    # The hidden layer's kernel and bias, the output kernel, and Adam's slots for each.
    pairs = re.findall(r"saved shape (\([\d, ]*\)) vs model shape (\([\d, ]*\))", line)
    assert ("(64, 32)", "(64, 48)") in pairs and ("(32,)", "(48,)") in pairs, line
    assert "Received: model=" in line
    # Nothing was trained over the other model's checkpoint.
    assert committed_steps(tmp_path)[-1] == step

    verbose = launcher(
        *MLP, f"--workdir={tmp_path}", "--config.model.kwargs.hidden_sizes=(48,)", "--verbosity=1"
    )
    assert verbose.returncode == 2, verbose.stderr[-3000:]
    assert "Traceback" in verbose.stderr and "CheckpointMismatchError" in verbose.stderr
    assert [x for x in verbose.stderr.splitlines() if x.startswith("launcher:")] == [line]


@pytest.mark.multiprocess
def test_every_process_exits_2_promptly(tmp_path):
    """Each process finds the mismatch itself and leaves without waiting for the others."""
    workdir = tmp_path / "run"
    r = launcher("--config=configs/mlp.py:tiny", "--num_cpu_devices=1", f"--workdir={workdir}")
    assert r.returncode == 0, r.stderr[-3000:]
    procs = start_launchers(
        2,
        1,
        "--config=configs/mlp.py:tiny",
        f"--workdir={workdir}",
        "--config.model.kwargs.hidden_sizes=(48,)",
        log_dir=tmp_path,
    )
    with reaped(procs):
        codes = [p.wait(timeout=60) for p in procs]
    outs = launcher_logs(tmp_path, 2)
    assert codes == [2, 2], [out[-2000:] for out in outs]
    for out in outs:
        lines = [x for x in out.splitlines() if x.startswith("launcher:")]
        assert len(lines) == 1 and "saved shape (64, 32) vs model shape (64, 48)" in lines[0]
        assert "Traceback" not in out


def test_config_the_data_cannot_serve_exits_2_with_one_line(tmp_path):
    """Checked once the data is loaded: more validation batches than the split holds."""
    r = launcher(*MLP, f"--workdir={tmp_path}", "--config.trainer.validation_steps=100000")
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("launcher:")]
    assert len(lines) == 1, r.stderr[-3000:]
    assert lines[0].startswith("launcher: config.trainer.validation_steps: asks for more batches")
    assert lines[0].endswith("Received: trainer.validation_steps=100000")
    assert committed_steps(tmp_path) == []
