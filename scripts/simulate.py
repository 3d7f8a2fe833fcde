"""Simulates a multi-host run on one machine: N launcher processes on localhost.

Each process gets its own CPU devices, and the processes find each other
through a coordinator on a free localhost port, exactly as hosts of a pod do.
The address is a loopback one, so the launcher binds the coordination service
to 127.0.0.1 only: nothing of a simulation is reachable from other machines.

Usage:
  python scripts/simulate.py --num_processes=2 --devices_per_process=4 -- \\
      --config=configs/lm.py --workdir=runs/sim

Everything after `--` is passed to every launcher process untouched; this
script adds `--coordinator_address`, `--num_processes`, `--process_id` and
`--num_cpu_devices`. Each process' output is streamed with a `[p{i}] ` prefix.

The launcher filters its own log lines (see launcher/logs.py); the console
is scripts/process_output.py. What a process prints outside of logging (C++ libraries, tracebacks before the log
is set up) is also appended to its log file (`<workdir>/logs/process_N.log`,
or `--logdir`) once the launcher created it; of these lines the routine ones
(gloo's "Rank 0 is connected to 1 peer ranks" at every new communicator) go
to the file only, unless `--verbosity=1` is passed after `--`. When this
script's output is a terminal, process 0 draws its progress as a live bar.

The first process that exits non-zero stops the others (SIGTERM, then SIGKILL
after --grace_s), and its exit code becomes ours. SIGINT or SIGTERM sent to
this script is forwarded to every process as SIGTERM so that each can save a
checkpoint; we then exit with the first non-zero code a process exited with,
or 128 + the signal number if none exited by itself. A process killed by
signal S counts as exit code 128 + S.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

import launch_flags  # scripts/, beside this file
import portpicker
from absl import app, flags

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, REPO_ROOT)

import process_output  # noqa: E402  (scripts/, beside this file; imports trainer)

from launcher import workdir as launcher_workdir  # noqa: E402
from trainer import console  # noqa: E402  (Keras-free)

# Flags that this script sets for each process; passing them after `--` too
# would silently give two values, so it is rejected.
_MANAGED_FLAGS = ("coordinator_address", "num_processes", "process_id", "num_cpu_devices")

_POLL_INTERVAL_S = 0.05
# How long to wait for a process' output to drain after it exited; a
# grandchild that inherited the pipe must not keep us waiting forever.
_DRAIN_TIMEOUT_S = 5.0
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", 2, "How many launcher processes (simulated hosts) to start."
)
_DEVICES_PER_PROCESS = flags.DEFINE_integer(
    "devices_per_process", 4, "CPU devices each process gets (--num_cpu_devices)."
)
_LAUNCHER_MODULE = flags.DEFINE_string(
    "launcher_module", "launcher.main", "Module each process runs with `python -m`."
)
_GRACE_S = flags.DEFINE_float(
    "grace_s", 10.0, "Seconds a process gets after SIGTERM before it is killed."
)


def _usage_error(message: str) -> None:
    launch_flags.usage_error("simulate", message)


_parse_flags = launch_flags.parser("simulate", "simulate.py --num_processes=2 --")


def _validate(passthrough: Sequence[str]) -> None:
    for flag in (_NUM_PROCESSES, _DEVICES_PER_PROCESS):
        if flag.value < 1:
            _usage_error(f"--{flag.name} must be >= 1. Received: {flag.value}")
    if _GRACE_S.value < 0:
        _usage_error(f"--grace_s must be >= 0. Received: {_GRACE_S.value}")
    for arg in passthrough:
        name = arg.lstrip("-").split("=", 1)[0]
        if arg.startswith("-") and name in _MANAGED_FLAGS:
            _usage_error(
                f"--{name} is set by simulate.py for each process; remove it after '--'. "
                f"Received: {arg}"
            )


def _exit_code(returncode: int) -> int:
    """Maps Popen's -SIG for a process killed by a signal to the shell's 128+SIG."""
    return 128 - returncode if returncode < 0 else returncode


def _describe(index: int, returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"process {index} was killed by {name} (exit {_exit_code(returncode)})"
    return f"process {index} exited {returncode}"


def flag_value(args: Sequence[str], *names: str) -> str | None:
    """The last value of absl flag `names` in `args` (`--name=v`, `-name=v`, `--name v`)."""
    value = None
    for i, arg in enumerate(args):
        if not arg.startswith("-"):
            continue
        name, equals, text = arg.lstrip("-").partition("=")
        if name in names:
            if equals:
                value = text
            elif i + 1 < len(args):
                value = args[i + 1]
    return value


def _detailed(passthrough: Sequence[str]) -> bool:
    """Whether the processes run with --verbosity >= 1 (every line on the console)."""
    value = flag_value(passthrough, "verbosity", "v")
    try:
        return value is not None and int(value) >= 1
    except ValueError:
        return False  # The launcher itself rejects it.


def log_files(passthrough: Sequence[str], num_processes: int) -> list[str] | None:
    """Where each launcher writes its log file (None: no --workdir to say)."""
    run_dir = flag_value(passthrough, "workdir")
    if not run_dir:
        return None

    def local(path: str | None) -> str | None:
        # The processes run in REPO_ROOT: relative paths are relative to it.
        if path is None or launcher_workdir.is_remote(path):
            return path
        return os.path.join(REPO_ROOT, path)

    folder = launcher_workdir.log_dir(local(run_dir), local(flag_value(passthrough, "logdir")))
    return [os.path.join(folder, f"process_{i}.log") for i in range(num_processes)]


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    inherited = env.get("PYTHONPATH")
    env["PYTHONPATH"] = REPO_ROOT + (os.pathsep + inherited if inherited else "")
    return env


class _Simulation:
    """Starts the processes, streams their output, and stops them together."""

    def __init__(
        self,
        *,
        num_processes: int,
        devices_per_process: int,
        launcher_module: str,
        passthrough: Sequence[str],
        grace_s: float,
        coordinator_host: str = "localhost",
        stop_on_failure: bool = True,
    ):
        self._coordinator_host = coordinator_host
        # False: wait for every process to exit by itself after a failure
        # (to observe what peers do when one host is lost).
        self._stop_on_failure = stop_on_failure
        self._num_processes = num_processes
        self._devices_per_process = devices_per_process
        self._launcher_module = launcher_module
        self._passthrough = list(passthrough)
        self._grace_s = grace_s
        self._procs: list[subprocess.Popen[bytes]] = []
        self._readers: list[threading.Thread] = []
        # (process index, returncode) in the order the exits were observed.
        self._exits: list[tuple[int, int]] = []
        self._signals: list[int] = []
        self._output = process_output.Console(
            detailed=_detailed(self._passthrough),
            log_paths=log_files(self._passthrough, num_processes),
        )
        # Process 0 draws its progress as a bar when our output is a terminal.
        self._bars = sys.stdout.isatty() and console.MODE_ENV not in os.environ

    def _on_signal(self, signum: int, frame: object) -> None:
        del frame  # Unused.
        self._signals.append(signum)

    def _command(self, index: int, port: int) -> list[str]:
        """The command line of process `index`; subclasses may wrap it."""
        return [
            sys.executable,
            "-m",
            self._launcher_module,
            f"--coordinator_address={self._coordinator_host}:{port}",
            f"--num_processes={self._num_processes}",
            f"--process_id={index}",
            f"--num_cpu_devices={self._devices_per_process}",
            *self._passthrough,
        ]

    def _start(self, port: int) -> None:
        for index in range(self._num_processes):
            env = _child_env()
            if index == 0 and self._bars:
                env[console.MODE_ENV] = "bar"
            command = self._command(index, port)
            # A session of its own: a terminal's Ctrl-C reaches only this
            # script, which forwards it, so shutdown follows one path.
            proc = subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self._procs.append(proc)
            reader = threading.Thread(
                target=self._output.stream, args=(index, proc.stdout), name=f"p{index}", daemon=True
            )
            reader.start()
            self._readers.append(reader)

    def _poll(self) -> None:
        """Records processes that exited since the last call, in exit order."""
        done = {index for index, _ in self._exits}
        for index, proc in enumerate(self._procs):
            if index not in done and proc.poll() is not None:
                self._exits.append((index, proc.returncode))

    def _running(self) -> list[subprocess.Popen[bytes]]:
        return [proc for proc in self._procs if proc.poll() is None]

    def _signal_all(self, signum: int) -> None:
        for proc in self._running():
            # The whole process group, so that workers a launcher started go
            # too. An unreaped child keeps its pid, so the group id is safe.
            try:
                os.killpg(proc.pid, signum)
            except ProcessLookupError:
                pass

    def _stop_all(self) -> None:
        """SIGTERM to the running processes; SIGKILL to those left after grace."""
        self._signal_all(signal.SIGTERM)
        seen_signals = len(self._signals)
        deadline = time.monotonic() + self._grace_s
        while self._running() and time.monotonic() < deadline:
            # A second Ctrl-C means "now": skip the rest of the grace period.
            if len(self._signals) > seen_signals:
                break
            time.sleep(_POLL_INTERVAL_S)
            self._poll()
        if self._running():
            self._signal_all(signal.SIGKILL)
        for proc in self._procs:
            proc.wait()
        self._poll()

    def _kill_all_now(self) -> None:
        """Last-resort cleanup when this script itself fails."""
        self._signal_all(signal.SIGKILL)
        for proc in self._procs:
            proc.wait()

    def run(self) -> int:
        """Runs the simulation to the end; returns this script's exit code."""
        start = time.monotonic()
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {s: signal.signal(s, self._on_signal) for s in handled}
        try:
            port = portpicker.pick_unused_port()
            self._output.write(
                f"simulate: starting {self._num_processes} processes x "
                f"{self._devices_per_process} CPU devices, coordinator {self._coordinator_host}:{port}, "
                f"module {self._launcher_module}\n"
            )
            self._start(port)
            failure = None
            while not self._signals:
                self._poll()
                failure = next(((i, rc) for i, rc in self._exits if rc != 0), None)
                if len(self._exits) == len(self._procs):
                    break
                if failure is not None and self._stop_on_failure:
                    break
                time.sleep(_POLL_INTERVAL_S)
            if failure is None and self._signals:
                summary, code = self._on_interrupt(self._signals[0])
            elif failure is not None:
                self._stop_all()
                summary = f"{_describe(*failure)}; stopped the others"
                code = _exit_code(failure[1])
            else:
                elapsed = time.monotonic() - start
                summary = f"all {len(self._procs)} processes exited 0 in {elapsed:.1f}s"
                code = 0
        except BaseException:
            self._kill_all_now()
            raise
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        for reader in self._readers:
            reader.join(timeout=_DRAIN_TIMEOUT_S)
        self._output.end_bar()
        self._output.write(f"simulate: {summary}\n")
        return code

    def _on_interrupt(self, signum: int) -> tuple[str, int]:
        name = signal.Signals(signum).name
        self._output.write(f"simulate: received {name}; sending SIGTERM to all processes\n")
        self._stop_all()
        # A process that exited with a code of its own (e.g. "preempted,
        # checkpoint saved") reports more than one that died by the signal.
        own = next(((i, rc) for i, rc in self._exits if rc > 0), None)
        if own is not None:
            return f"received {name}; {_describe(*own)}", own[1]
        return f"received {name}; stopped all processes", 128 + signum


def main(argv: list[str]) -> int:
    passthrough = argv[1:]
    _validate(passthrough)
    simulation = _Simulation(
        num_processes=_NUM_PROCESSES.value,
        devices_per_process=_DEVICES_PER_PROCESS.value,
        launcher_module=_LAUNCHER_MODULE.value,
        passthrough=passthrough,
        grace_s=_GRACE_S.value,
    )
    return simulation.run()


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
