"""Tests for scripts/simulate.py, run as a real subprocess with a fake launcher.

The fake launcher module is written into tmp_path and found through
PYTHONPATH, so these tests need neither JAX nor the real launcher.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
SIMULATE = REPO_ROOT / "scripts" / "simulate.py"
TIMEOUT_S = 30

# Behaviour is chosen by the passthrough flag --mode, so passthrough is
# exercised by every test. Files are written atomically for the test to poll.
FAKE_LAUNCHER = textwrap.dedent(
    """
    import json, os, signal, sys, time

    args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
    index = int(args["process_id"])
    out = os.environ["FAKE_DIR"]

    def write(name, text):
        path = os.path.join(out, name)
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)

    def wait_for(name):
        deadline = time.monotonic() + 20
        while not os.path.exists(os.path.join(out, name)) and time.monotonic() < deadline:
            time.sleep(0.02)

    write(f"pid_{index}", str(os.getpid()))
    write(f"argv_{index}.json", json.dumps(sys.argv[1:]))
    mode = args["mode"]
    if mode == "ok":
        print(f"hello from {index}")
        print(f"stderr from {index}", file=sys.stderr)
        sys.exit(0)
    if mode == "fail":
        if index == 1:
            wait_for("ready_0")
            sys.exit(3)
        if args.get("ignore_term") == "1":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        write("ready_0", "")
        time.sleep(600)
    if mode == "killed":
        if index == 0:
            wait_for("pid_1")  # Process 1 is up (the test checks it is gone after).
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(600)
    if mode == "term":
        def on_term(signum, frame):
            write(f"term_{index}", "")
            sys.exit(42)
        signal.signal(signal.SIGTERM, on_term)
        write(f"ready_{index}", "")
        while True:
            time.sleep(0.1)
    if mode == "noisy":  # What the launcher and C++ libraries print, as they print it.
        logs = os.path.join(args["workdir"], "logs")
        os.makedirs(logs, exist_ok=True)
        with open(os.path.join(logs, f"process_{index}.log"), "a") as f:
            f.write(f"[p{index}] I0101 launcher line\\n")  # The launcher's own file handler.
        print(f"[p{index}] podfit: a console line", flush=True)
        print(f"[Gloo] Rank {index} is connected to 1 peer ranks. "
              "Expected number of connected peer ranks is : 1", file=sys.stderr, flush=True)
        print(f"[Gloo] Rank [Gloo] Rank {index} is connected to ", file=sys.stderr, flush=True)
        print(f"raw line from {index}", file=sys.stderr, flush=True)
        if index == 0:
            sys.stderr.write("\\x1b[K[###.] step 1/2\\r\\x1b[K[####] step 2/2\\r")
            sys.stderr.flush()
            print("\\x1b[K[p0] after the bar", file=sys.stderr, flush=True)
        sys.exit(0)
    raise SystemExit(f"unknown --mode={mode}")
    """
)


@pytest.fixture
def fake_dir(tmp_path: pathlib.Path):
    """A directory holding the fake launcher; kills any fake left behind."""
    (tmp_path / "fake_launcher.py").write_text(FAKE_LAUNCHER)
    yield tmp_path
    for pid_file in tmp_path.glob("pid_*"):
        try:
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def _env(fake_dir: pathlib.Path) -> dict[str, str]:
    env = dict(os.environ)
    inherited = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(fake_dir) + (os.pathsep + inherited if inherited else "")
    env["FAKE_DIR"] = str(fake_dir)
    return env


def _command(num_processes: int, *passthrough: str, grace_s: float = 5) -> list[str]:
    return [
        sys.executable,
        str(SIMULATE),
        f"--num_processes={num_processes}",
        "--devices_per_process=3",
        "--launcher_module=fake_launcher",
        f"--grace_s={grace_s}",
        "--",
        *passthrough,
    ]


def _run(fake_dir: pathlib.Path, command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, env=_env(fake_dir), capture_output=True, text=True, timeout=TIMEOUT_S
    )


def _wait_for(path: pathlib.Path, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout_s}s")
        time.sleep(0.02)


def _assert_gone(pid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_all_processes_exit_zero(fake_dir):
    passthrough = ["--mode=ok", "--config=configs/lm.py", "--workdir=a dir", "--config.x=1"]
    result = _run(fake_dir, _command(2, *passthrough))

    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for index in range(2):
        assert f"[p{index}] hello from {index}" in lines
        assert f"[p{index}] stderr from {index}" in lines
    assert lines[-1].startswith("simulate: all 2 processes exited 0 in ")
    port = None
    for index in range(2):
        argv = json.loads((fake_dir / f"argv_{index}.json").read_text())
        address = argv[0].removeprefix("--coordinator_address=localhost:")
        assert address.isdigit(), argv
        port = port or address
        assert address == port  # Every process talks to the same coordinator.
        assert argv[1:] == [
            "--num_processes=2",
            f"--process_id={index}",
            "--num_cpu_devices=3",
            *passthrough,
        ]


@pytest.mark.parametrize("ignore_term", ["0", "1"], ids=["sigterm", "sigkill_after_grace"])
def test_first_failure_stops_the_others(fake_dir, ignore_term):
    start = time.monotonic()
    result = _run(fake_dir, _command(2, "--mode=fail", f"--ignore_term={ignore_term}", grace_s=1))

    assert result.returncode == 3, result.stdout + result.stderr
    assert time.monotonic() - start < 10
    assert result.stdout.splitlines()[-1] == "simulate: process 1 exited 3; stopped the others"
    _assert_gone(int((fake_dir / "pid_0").read_text()))


def test_process_killed_by_signal_maps_to_128_plus_signal(fake_dir):
    result = _run(fake_dir, _command(2, "--mode=killed", grace_s=1))

    assert result.returncode == 128 + signal.SIGKILL, result.stdout + result.stderr
    assert "process 0 was killed by SIGKILL (exit 137)" in result.stdout
    _assert_gone(int((fake_dir / "pid_1").read_text()))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_is_forwarded_as_sigterm(fake_dir, signum):
    proc = subprocess.Popen(
        _command(2, "--mode=term"),
        env=_env(fake_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for index in range(2):
            _wait_for(fake_dir / f"ready_{index}")
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert proc.returncode == 42, stdout + stderr
    for index in range(2):
        assert (fake_dir / f"term_{index}").exists()
        _assert_gone(int((fake_dir / f"pid_{index}").read_text()))
    assert f"received {signal.Signals(signum).name}" in stdout.splitlines()[-1]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--num_processes=0"], ["num_processes", "Received: 0"]),
        (["--devices_per_process=-1"], ["devices_per_process", "Received: -1"]),
        (["--num_processes=two"], ["num_processes", "two"]),
        (["--", "--process_id=1"], ["process_id", "Received: --process_id=1"]),
    ],
)
def test_bad_input_exits_2_with_one_line(fake_dir, args, expected):
    result = _run(fake_dir, [sys.executable, str(SIMULATE), *args])

    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    for text in expected:
        assert text in lines[0]
    assert not list(fake_dir.glob("pid_*"))  # Nothing was started.


@pytest.mark.parametrize("verbosity", [None, "1"], ids=["default", "verbosity_1"])
def test_routine_lines_go_to_the_log_file_and_the_rest_to_the_console(fake_dir, verbosity):
    workdir = fake_dir / "run"
    extra = [] if verbosity is None else [f"--verbosity={verbosity}"]
    result = subprocess.run(
        _command(2, "--mode=noisy", f"--workdir={workdir}", *extra),
        env=_env(fake_dir),
        capture_output=True,
        timeout=TIMEOUT_S,
    )
    out = result.stdout.decode()  # Bytes: text mode would turn each \r into a new line.
    assert result.returncode == 0, out + result.stderr.decode()
    for index in range(2):
        log = (workdir / "logs" / f"process_{index}.log").read_text().splitlines()
        # The launcher's lines stay as it wrote them; what it printed outside of logging
        # is added, routine or not; its console lines are in the file through its handler.
        assert log[0] == f"[p{index}] I0101 launcher line"
        assert f"[Gloo] Rank {index} is connected to 1 peer ranks." in log[1]
        assert log[3] == f"raw line from {index}"
        assert f"[p{index}] podfit: a console line\n" in out
        assert f"[p{index}] raw line from {index}\n" in out
    gloo = [line for line in out.splitlines() if "Gloo" in line]
    assert len(gloo) == (0 if verbosity is None else 4), out
    # A bar's frames are drawn in place; a line of its process ends it.
    assert f"\r{ESC}[####] step 2/2" in out.replace("[p0] ", "")
    assert f"\r{ESC}[p0] after the bar\n" in out


ESC = "\x1b[K"


def test_gloo_pieces_and_blank_lines_are_routine_other_lines_not():
    # gloo's lines as its C++ threads interleave them (seen in a 2 x 4 run).
    lines = [
        "[Gloo] Rank 1 is connected to 1 peer ranks. Expected number of connected peer ranks is : 1",
        "3 is connected to 3 peer ranks. Expected number of connected peer ranks is : 3",
        "[Gloo] Rank [Gloo] Rank 0 is connected to [Gloo] Rank 0[Gloo] Rank 1 is connected to "
        " is connected to 1111 peer ranks. Expected number of connected peer ranks is :  peer "
        "ranks.  peer ranks. Expected number of connected peer ranks is : 1",
        " is connected to 1 peer ranks. Expected number of connected peer ranks is : 1",
        "1",  # The last piece of a line, alone (seen in a 2 x 4 run's console).
        "",
        "   ",
        "Fatal Python error: Segmentation fault",
        "connected to the wrong host 10.0.0.1",
        "loss 3",
    ]
    check = (
        "import json, sys; sys.path.insert(0, 'scripts'); import process_output; "
        "print(json.dumps([process_output.routine(x) for x in json.loads(sys.argv[1])]))"
    )
    r = subprocess.run(
        [sys.executable, "-c", check, json.dumps(lines)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [True] * 7 + [False] * 3
