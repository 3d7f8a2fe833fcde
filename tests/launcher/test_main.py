"""Bad input exits 2 with one line naming the field and the received value."""

import pytest

from tests.helpers import launcher

LM = "--config=configs/lm.py:tiny"


def _one_line_exit_2(result, *needles):
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("launcher:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_mesh_shape_not_matching_devices(tmp_path):
    r = launcher(
        "--config=configs/lm.py",
        f"--workdir={tmp_path}",
        "--num_cpu_devices=8",
        "--config.mesh.shape=(3,3)",
    )
    _one_line_exit_2(r, "mesh.shape", "(3, 3)")


@pytest.mark.parametrize(
    "flag,needles",
    [
        ("--config.trainer.bogus=1", ("bogus", "--config.trainer.bogus=1")),
        ("--config.trainer.epochs=abc", ("trainer.epochs", "abc")),
        ("--config.trainer.epochs=0", ("trainer.epochs", "0")),
        ("--config.data.global_batch_size=15", ("data.global_batch_size", "15")),
        ("--config.mesh.layout_rules=(('kernel', ('tensor', None)),)", ("layout_rules", "tensor")),
        ("--config.trainer.profile_steps=(15,10)", ("trainer.profile_steps", "(15, 10)")),
    ],
)
def test_config_errors(tmp_path, flag, needles):
    _one_line_exit_2(launcher(LM, f"--workdir={tmp_path}", "--num_cpu_devices=4", flag), *needles)


def test_unknown_preset_and_missing_file(tmp_path):
    _one_line_exit_2(launcher("--config=configs/lm.py:huge", f"--workdir={tmp_path}"), "huge")
    _one_line_exit_2(launcher("--config=configs/nope.py", f"--workdir={tmp_path}"), "nope.py")


def test_inconsistent_distributed_flags(tmp_path):
    r = launcher(LM, f"--workdir={tmp_path}", "--num_processes=2")
    _one_line_exit_2(r, "coordinator_address", "num_processes=2")
    r = launcher(
        LM,
        f"--workdir={tmp_path}",
        "--coordinator_address=localhost:1",
        "--num_processes=2",
        "--process_id=5",
    )
    _one_line_exit_2(r, "process_id", "5")


def test_bad_local_device_ids(tmp_path):
    r = launcher(LM, f"--workdir={tmp_path}", "--local_device_ids=0,gpu1")
    _one_line_exit_2(r, "--local_device_ids", "Received: local_device_ids='0,gpu1'")


def test_workdir_that_cannot_be_written(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    _one_line_exit_2(launcher(LM, f"--workdir={blocked}/sub"), "--workdir", str(blocked))


@pytest.mark.multiprocess
def test_config_differing_between_processes_exits_2_everywhere(tmp_path):
    import subprocess
    import sys

    import portpicker

    from tests.helpers import REPO, env

    port = portpicker.pick_unused_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "launcher.main",
                LM,
                f"--workdir={tmp_path}",
                "--num_cpu_devices=2",
                f"--coordinator_address=localhost:{port}",
                "--num_processes=2",
                f"--process_id={i}",
                *(["--config.optimizer.learning_rate=0.1"] if i == 1 else []),
            ],
            cwd=REPO,
            env=env(),
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    try:
        results = [p.communicate(timeout=120)[1] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, stderr in zip(procs, results, strict=True):
        assert p.returncode == 2, stderr[-2000:]
        line = [x for x in stderr.splitlines() if x.startswith("launcher:")]
        assert len(line) == 1 and "optimizer.learning_rate" in line[0] and "0.1" in line[0]
