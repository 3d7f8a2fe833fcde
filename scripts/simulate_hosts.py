"""Simulates a multi-host run on one machine with a real network between the hosts.

Like `simulate.py`, but each launcher process runs in a network namespace of
its own (`<netns_prefix>-h<i>`, interface `eth0`, address i+1 of --subnet)
and the coordinator is host 0's address, so the processes reach each other
only through that network: faults can be injected on it, e.g.
`ip -n podfit-h1 link set eth0 down` takes host 1 off the network.
`scripts/host_network.py` says how the links are made (a bridge, or with
--link_delay_ms a switch that delays every packet).

Usage (as root; Linux network namespaces):
  python scripts/simulate_hosts.py --num_processes=2 --devices_per_process=4 -- \\
      --config=configs/lm.py:tiny --workdir=runs/hosts --heartbeat_timeout_s=10

Everything after `--` goes to every launcher process untouched, as in
`simulate.py`. Exit codes are `simulate.py`'s. The namespaces, links, bridge
and hosts files are removed when the run ends, also on failure and on
SIGINT/SIGTERM (which are forwarded to the processes first, as in
`simulate.py`).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import host_network  # scripts/, beside this file
import launch_flags
import simulate
from absl import app, flags

_NETNS_PREFIX = flags.DEFINE_string(
    "netns_prefix", "podfit", "Network namespaces are named <prefix>-h<i> (and <prefix>-hub)."
)
_SUBNET = flags.DEFINE_string(
    "subnet", "10.213.0.0/24", "Private IPv4 subnet of the hosts; host i gets address i+1."
)
_LINK_DELAY_MS = flags.DEFINE_float(
    "link_delay_ms", 0.0, "Latency added to every packet between hosts, one way (ms)."
)
_STOP_ON_FAILURE = flags.DEFINE_boolean(
    "stop_on_failure",
    True,
    "Stop the other processes when one fails; with --nostop_on_failure each "
    "process is left to exit by itself (to see what the peers of a lost host do).",
)

_PROGRAM = "simulate_hosts"
_parse_flags = launch_flags.parser(_PROGRAM, "simulate_hosts.py --num_processes=2 --")


class _HostSimulation(simulate._Simulation):
    """simulate.py's process handling, each process started on its own host."""

    def __init__(self, network: host_network.HostNetwork, **kwargs):
        super().__init__(coordinator_host=network.addresses[0], **kwargs)
        self._network = network
        self._started = time.monotonic()

    def _command(self, index: int, port: int) -> list[str]:
        return [*self._network.exec_prefix(index), *super()._command(index, port)]

    def _poll(self) -> None:
        seen = len(self._exits)
        super()._poll()
        elapsed = time.monotonic() - self._started
        for index, returncode in self._exits[seen:]:
            self._output.write(
                f"{_PROGRAM}: {simulate._describe(index, returncode)} at {elapsed:.1f}s\n"
            )


def _validate() -> None:
    if os.geteuid() != 0:
        launch_flags.usage_error(
            _PROGRAM, f"network namespaces need root. Received: uid={os.geteuid()}"
        )
    if shutil.which("ip") is None:
        launch_flags.usage_error(_PROGRAM, "the `ip` command (iproute2) is missing. Received: PATH")
    if _LINK_DELAY_MS.value < 0:
        launch_flags.usage_error(
            _PROGRAM,
            f"--link_delay_ms must be >= 0. Received: link_delay_ms={_LINK_DELAY_MS.value}",
        )
    taken = host_network.leftovers(_NETNS_PREFIX.value)
    if taken:
        launch_flags.usage_error(
            _PROGRAM,
            f"namespaces of that prefix exist already; pick another --netns_prefix or remove them. "
            f"Received: netns_prefix={_NETNS_PREFIX.value} ({', '.join(taken)})",
        )


def _raise_exit(signum: int, frame: object) -> None:
    del frame  # Unused.
    raise SystemExit(128 + signum)


def main(argv: list[str]) -> int:
    passthrough = argv[1:]
    simulate._validate(passthrough)
    _validate()
    try:
        network = host_network.HostNetwork(
            _NETNS_PREFIX.value,
            simulate._NUM_PROCESSES.value,
            _SUBNET.value,
            _LINK_DELAY_MS.value,
        )
    except ValueError as e:
        launch_flags.usage_error(_PROGRAM, f"{e} (--subnet={_SUBNET.value})")
    # Until the simulation takes them over (and after it gives them back), a
    # signal ends this script through `finally`, which removes the network.
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, _raise_exit)
    try:
        try:
            network.open()
        except subprocess.CalledProcessError as e:
            sys.stderr.write(f"{_PROGRAM}: {' '.join(e.cmd)} failed: {e.stderr.strip()}\n")
            return 1
        sys.stdout.write(
            f"{_PROGRAM}: hosts {', '.join(network.addresses)} in namespaces "
            f"{', '.join(network.hosts)}; link delay {_LINK_DELAY_MS.value:g} ms\n"
        )
        simulation = _HostSimulation(
            network,
            num_processes=simulate._NUM_PROCESSES.value,
            devices_per_process=simulate._DEVICES_PER_PROCESS.value,
            launcher_module=simulate._LAUNCHER_MODULE.value,
            passthrough=passthrough,
            grace_s=simulate._GRACE_S.value,
            stop_on_failure=_STOP_ON_FAILURE.value,
        )
        return simulation.run()
    finally:
        # A second signal must not cut the removal short.
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)
        network.close()
        sys.stdout.write(f"{_PROGRAM}: removed namespaces {', '.join(network.hosts)}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
