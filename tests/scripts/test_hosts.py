"""Hosts on a real network: scripts/simulate_hosts.py, one network namespace per process.

- host 1's link goes down after the first commit: the other process exits
  non-zero by itself within the heartbeat timeout (plus a margin), and the
  relaunch ends bitwise equal to an uninterrupted run;
- 50 ms added to every packet between hosts: the run completes, and a
  relaunch resumes and ends bitwise equal to an uninterrupted run;
- SIGTERM or SIGINT to the script: the processes are stopped, the network is
  removed.

Every test checks that no namespace, link, hosts file or qdisc is left (and
removes any it finds, so a failing test leaves nothing either).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.helpers import LM, REPO, committed_steps, env, finals, simulate, wait_for_text

sys.path.insert(0, str(REPO / "scripts"))
import host_network  # noqa: E402 - scripts/ is not a package.

HEARTBEAT_S = 10
# Beyond the heartbeat timeout: noticing it, aborting, and a loaded machine.
MARGIN_S = 50
RUN_TIMEOUT_S = 300
_names = itertools.count()


def _machine_network() -> tuple[str, str]:
    """The root namespace's links and qdiscs (what a run must leave as it found)."""
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    qdiscs = subprocess.run(["tc", "qdisc", "show"], capture_output=True, text=True, check=True)
    # Link counters and flags change on their own; names are what must not.
    names = sorted(line.split(":")[1].strip() for line in links.stdout.splitlines())
    return "\n".join(names), qdiscs.stdout


@pytest.fixture(scope="module", autouse=True)
def iproute2():
    """`ip` and `tc` (Debian's iproute2), apt-get installed if missing (the tests run as root)."""
    if shutil.which("ip") and shutil.which("tc"):
        return
    apt = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "iproute2"]):
        subprocess.run(command, env=apt, check=True, capture_output=True, timeout=600)


@pytest.fixture
def prefix():
    """A fresh namespace prefix; afterwards, nothing of it may remain (and nothing does)."""
    name = f"pft{os.getpid()}n{next(_names)}"
    before = _machine_network()
    yield name
    left = host_network.leftovers(name)
    host_network.remove(name)
    assert not left, f"left behind: {left}"
    assert _machine_network() == before


def _hosts_cmd(prefix: str, *args: str, ours: tuple[str, ...] = ()) -> list[str]:
    return [
        sys.executable,
        "scripts/simulate_hosts.py",
        "--num_processes=2",
        "--devices_per_process=4",
        "--grace_s=5",
        f"--netns_prefix={prefix}",
        *ours,
        "--",
        *args,
        f"--heartbeat_timeout_s={HEARTBEAT_S}",
    ]


def _run_hosts(prefix: str, *args: str, ours: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run(
        _hosts_cmd(prefix, *args, ours=ours),
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> str:
    """Weights digest of an uninterrupted plain simulate.py run, 2 x 4, 24 steps."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    r = simulate(2, 4, *LM, f"--workdir={workdir}")
    assert r.returncode == 0, r.stdout[-3000:]
    return finals(workdir)[0]["weights_sha256"]


def _exits(out: str) -> dict[int, str]:
    return dict(
        (int(i), how)
        for i, how in re.findall(
            r"simulate_hosts: process (\d) (exited \d+|was killed by \S+)", out
        )
    )


@pytest.mark.multiprocess
def test_lost_host_network_stops_peers_and_relaunch_is_bitwise_equal(reference, prefix, tmp_path):
    workdir = tmp_path / "lost"
    log = tmp_path / "simulate_hosts.out"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            _hosts_cmd(prefix, *LM, f"--workdir={workdir}", ours=("--nostop_on_failure",)),
            cwd=REPO,
            env=env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not committed_steps(workdir) and proc.poll() is None:
            assert time.monotonic() < deadline, "no step committed"
            time.sleep(0.05)
        assert proc.poll() is None, log.read_text()[-3000:]
        subprocess.run(["ip", "-n", f"{prefix}-h1", "link", "set", "eth0", "down"], check=True)
        # Each process is left to exit by itself (--nostop_on_failure).
        proc.wait(timeout=HEARTBEAT_S + MARGIN_S)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # The script stops the processes, removes the network.
            proc.wait(timeout=60)
    text = log.read_text()
    exits = _exits(text)
    assert sorted(exits) == [0, 1] and "exited 0" not in exits.values(), text[-3000:]
    assert proc.returncode != 0
    assert not host_network.leftovers(prefix), "the failed run must remove its network"
    assert not finals(workdir), "the run that lost a host must not have finished"
    committed = committed_steps(workdir)
    assert committed and max(committed) < 24

    r = _run_hosts(prefix, *LM, f"--workdir={workdir}")
    assert r.returncode == 0, r.stdout[-3000:]
    assert f"resumed from step {max(committed)}" in r.stdout
    done = finals(workdir)
    assert [d["final_step"] for d in done] == [24, 24]
    assert [d["weights_sha256"] for d in done] == [reference, reference]


# Every packet 50 ms late makes a step of the tiny LM cost ~14 s instead of
# ~0.4 s (each of its cross-process collectives waits several round trips),
# so this scenario runs one step per epoch, without validation.
SHORT = (
    *LM,
    "--config.trainer.steps_per_epoch=1",
    "--config.trainer.validation_steps=0",
    "--config.trainer.epochs=2",
    "--config.checkpoint.save_freq=1",
)


@pytest.mark.multiprocess
def test_added_latency_run_completes_and_resumes(prefix, tmp_path):
    reference = tmp_path / "uninterrupted"
    r = simulate(2, 4, *SHORT, f"--workdir={reference}")
    assert r.returncode == 0, r.stdout[-3000:]
    expected = finals(reference)[0]["weights_sha256"]

    workdir = tmp_path / "slow"
    delay = ("--link_delay_ms=50",)
    r = _run_hosts(prefix, *SHORT, f"--workdir={workdir}", "--config.trainer.epochs=1", ours=delay)
    assert r.returncode == 0, r.stdout[-3000:]
    assert "link delay 50 ms" in r.stdout
    assert committed_steps(workdir) == [1]
    assert not host_network.leftovers(prefix)

    r = _run_hosts(prefix, *SHORT, f"--workdir={workdir}", ours=delay)
    assert r.returncode == 0, r.stdout[-3000:]
    assert "resumed from step 1" in r.stdout
    done = finals(workdir)
    assert [d["final_step"] for d in done] == [2, 2]
    assert [d["weights_sha256"] for d in done] == [expected, expected]


# Reports what a launcher process sees of its host, then waits to be stopped.
FAKE_LAUNCHER = textwrap.dedent(
    """
    import json, os, socket, sys, time

    args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
    seen = {"address": socket.gethostbyname(socket.gethostname()), "argv": sys.argv[1:]}
    path = os.path.join(os.environ["FAKE_DIR"], f"seen_{args['process_id']}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(seen, f)
    os.replace(path + ".tmp", path)
    time.sleep(600)
    """
)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_signal_stops_processes_and_removes_the_network(prefix, tmp_path, signum):
    (tmp_path / "fake_launcher.py").write_text(FAKE_LAUNCHER)
    cmd = _hosts_cmd(prefix, "--mode=wait", ours=("--launcher_module=fake_launcher",))
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env={**env(), "PYTHONPATH": str(tmp_path), "FAKE_DIR": str(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        for i in range(2):
            wait_for_text(tmp_path / f"seen_{i}.json", "argv")
        assert sorted(n for n in host_network.namespaces() if n.startswith(prefix)) == [
            f"{prefix}-h0",
            f"{prefix}-h1",
            f"{prefix}-hub",
        ]
        proc.send_signal(signum)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signum, out
    assert f"removed namespaces {prefix}-h0, {prefix}-h1" in out
    assert not host_network.leftovers(prefix)
    seen = [json.loads((tmp_path / f"seen_{i}.json").read_text()) for i in range(2)]
    # Each process' hostname resolves to its own host's address (what gloo binds).
    assert [s["address"] for s in seen] == ["10.213.0.1", "10.213.0.2"]
    coordinators = {a for s in seen for a in s["argv"] if a.startswith("--coordinator_address=")}
    assert len(coordinators) == 1 and coordinators.pop().startswith(
        "--coordinator_address=10.213.0.1:"
    )


def test_bad_flags_exit_2_and_leave_nothing(prefix):
    r = _run_hosts(prefix, ours=("--link_delay_ms=-1",))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "simulate_hosts: --link_delay_ms must be >= 0. Received: link_delay_ms=-1.0"
    ]
