"""A real single-node SLURM cluster for tests: munged, slurmctld and slurmd under one directory.

Debian's packages (`slurmctld slurmd slurm-client munge`) are installed with
apt-get when missing (the tests run as root). No systemd: each daemon runs in
the foreground in its own process group, with its configuration, state,
sockets and logs under the given directory, and listens on free ports, so
that nothing of the machine's own SLURM (if any) is used or changed. On the
way out every daemon's process group is killed, also when the test failed.

  with single_node(tmp_path) as cluster:
      job = cluster.sbatch("--ntasks=2", "scripts/slurm/podfit.sbatch", "--config=...")
      cluster.wait_for_state(job, {"COMPLETED"})
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
_PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "scancel", "sinfo")
_START_TIMEOUT_S = 60
_INSTALL_TIMEOUT_S = 900

_CONF = """\
ClusterName=podfit-test
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire also holds a requeued job back that long before it starts again
# (default 120 s).
AuthInfo=socket={munge_socket},cred_expire=10
CredType=cred/munge
StateSaveLocation={root}/ctld
SlurmdSpoolDir={root}/slurmd
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups in a container: processes tracked through /proc, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
# A requeued job waits for the scheduler's periodic pass (default every 60 s).
SchedulerParameters=sched_interval=2,bf_interval=1
JobRequeue=1
KillWait=30
MinJobAge=600
# The node's CPUs as configured, whatever the machine has.
SlurmdParameters=config_overrides
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
"""


def ensure_installed() -> None:
    """apt-get installs PACKAGES if a program of theirs is missing (as root)."""
    if all(shutil.which(p) for p in _PROGRAMS):
        return
    apt = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", *PACKAGES]):
        r = subprocess.run(
            command, env=apt, capture_output=True, text=True, timeout=_INSTALL_TIMEOUT_S
        )
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} exited {r.returncode}: {r.stderr[-2000:]}")
    missing = [p for p in _PROGRAMS if not shutil.which(p)]
    if missing:
        raise RuntimeError(f"still missing after apt-get install: {missing}")


def _free_port() -> int:
    import portpicker

    return portpicker.pick_unused_port()


@dataclass
class Cluster:
    """The client side of a running single-node cluster."""

    root: Path
    node: str
    env: dict

    def run(self, *command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        r = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} exited {r.returncode}: {r.stdout[-1000:]} {r.stderr[-1000:]}"
            )
        return r

    def sbatch(self, *args: str, cwd: Path) -> int:
        """Submits a batch job; returns its id."""
        r = subprocess.run(
            ["sbatch", "--parsable", *args],
            env=self.env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if r.returncode != 0:
            raise RuntimeError(f"sbatch exited {r.returncode}: {r.stderr[-2000:]}")
        return int(r.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, ExitCode, Restarts, ...)."""
        out = self.run("scontrol", "show", "job", "-o", str(job_id)).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def wait_for_state(self, job_id: int, states: set[str], timeout: float = 300) -> dict:
        """Waits until the job is in one of `states`; returns its fields."""
        deadline = time.monotonic() + timeout
        while True:
            fields = self.job(job_id)
            if fields.get("JobState") in states:
                return fields
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} not in {states} after {timeout}s: {fields}")
            time.sleep(0.2)

    def logs(self) -> str:
        """The daemons' logs (for assertion messages)."""
        return "\n".join(
            f"--- {name}\n" + (self.root / name).read_text()[-3000:]
            for name in ("munged.log", "slurmctld.log", "slurmd.log")
            if (self.root / name).exists()
        )


def _default_signals() -> None:
    """In the daemon's child, before exec: no signal blocked or ignored.

    The daemons (and through slurmd, the job's tasks) inherit the signal mask
    and ignored signals of the test process, which earlier tests in the same
    process may have changed (a blocked SIGTERM never reaches the tasks).
    """
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(number, signal.SIG_DFL)


def _start(command: list[str], log: Path, env: dict) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            command,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_default_signals,
        )


def _stop(proc: subprocess.Popen) -> None:
    """Kills the daemon's whole process group (a daemon's children included)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _kill_stragglers(conf: Path) -> None:
    """SIGKILLs what is left of the cluster: job steps, batch scripts, tasks.

    slurmd starts each step's slurmstepd outside its own process group; every
    process of the cluster has SLURM_CONF pointing at our configuration.
    """
    marker = f"SLURM_CONF={conf}".encode()
    for _ in range(50):
        found = False
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found = True
                    os.kill(int(entry.name), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                continue  # Gone meanwhile, or a zombie.
        if not found:
            return
        time.sleep(0.1)


def _wait(check, what: str, cluster: Cluster, procs: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while not check():
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{p.args[0]} exited {p.returncode}\n{cluster.logs()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not within {_START_TIMEOUT_S}s\n{cluster.logs()}")
        time.sleep(0.2)


@contextlib.contextmanager
def single_node(root: Path, cpus: int = 4) -> Iterator[Cluster]:
    """Starts munged, slurmctld and slurmd under `root`; yields the client side."""
    ensure_installed()
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)  # munged refuses group- or world-writable directories.
    for sub in ("ctld", "slurmd", "munge"):
        (root / sub).mkdir(mode=0o700, exist_ok=True)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    munge_socket = root / "munge" / "munge.socket"
    node = socket.gethostname().split(".")[0]
    try:  # JAX's SLURM detection dials the coordinator by node name.
        socket.gethostbyname(node)
    except OSError as e:
        raise RuntimeError(
            f"this host's name {node!r} does not resolve ({e}); add it to /etc/hosts"
        ) from e
    conf = root / "slurm.conf"
    conf.write_text(
        _CONF.format(
            node=node,
            root=root,
            cpus=cpus,
            ctld_port=_free_port(),
            slurmd_port=_free_port(),
            munge_socket=munge_socket,
        )
    )
    env = {**os.environ, "SLURM_CONF": str(conf)}
    # Variables of an enclosing job would be taken for this cluster's.
    env = {k: v for k, v in env.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    env["SLURM_CONF"] = str(conf)
    cluster = Cluster(root=root, node=node, env=env)
    procs: list[subprocess.Popen] = []
    try:
        procs.append(
            _start(
                [
                    "munged",
                    "--foreground",
                    "--force",
                    f"--key-file={key}",
                    f"--socket={munge_socket}",
                    f"--pid-file={root / 'munge' / 'munged.pid'}",
                    f"--log-file={root / 'munged.log'}",
                    f"--seed-file={root / 'munge' / 'munged.seed'}",
                ],
                root / "munged.out",
                env,
            )
        )
        _wait(munge_socket.exists, "munged's socket", cluster, procs)
        procs.append(_start(["slurmctld", "-D", "-i", "-f", str(conf)], root / "ctld.out", env))
        procs.append(
            _start(["slurmd", "-D", "-f", str(conf), "-N", node], root / "slurmd.out", env)
        )

        def idle() -> bool:
            r = subprocess.run(
                ["sinfo", "-h", "-N", "-o", "%T"], env=env, capture_output=True, text=True
            )
            return r.returncode == 0 and r.stdout.strip() == "idle"

        _wait(idle, "the node idle", cluster, procs)
        yield cluster
    finally:
        for p in reversed(procs):
            _stop(p)
        _kill_stragglers(conf)
