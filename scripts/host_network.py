"""Simulated hosts on real networks: one Linux network namespace per host.

`HostNetwork` gives host i the namespace `<prefix>-h<i>` with one interface,
`eth0`, holding the address `<subnet>.(i+1)`. Two kinds of link join them:

- delay 0: a veth pair per host into a bridge `br0` that lives in a namespace
  of its own (`<prefix>-hub`), so nothing is added to the machine's own
  network and traffic flows only between these namespaces;
- delay > 0: a TUN device per host, and a userspace switch in this process
  that forwards each IPv4 packet to the host owning its destination address
  after holding it `delay_ms`. Every packet of every connection is delayed
  (the coordination service's gRPC, gloo's collectives, everything), as
  `tc qdisc ... netem delay` would do it. netem is the usual tool, but
  kernels built without `CONFIG_NET_SCH_NETEM` (some cloud and sandbox
  kernels, with no modules to load) refuse it ("Specified qdisc kind is
  unknown"), and no package can add it; the switch needs nothing but
  `/dev/net/tun`. A packet from host a to host b is delayed once (one way:
  `delay_ms`, a round trip: twice that).

Taking a host off the network is the real thing either way:
`ip -n <prefix>-h1 link set eth0 down`.

Each namespace also gets `/etc/netns/<namespace>/hosts`, which
`ip netns exec` mounts over `/etc/hosts`: there the machine's hostname
resolves to the host's own address, as on a real host. gloo (JAX's CPU
collectives, `make_gloo_tcp_collectives` with no interface or hostname
given) binds to and announces the address its hostname resolves to; with
the machine's `/etc/hosts` that would be 127.0.0.1, which no peer can reach
(tried: gloo's `failed to connect ... remote=[127.0.0.1]:...: Connection
refused`, then the run fails). JAX passes neither `hostname` nor
`interface` to it, and `GLOO_SOCKET_IFNAME` is PyTorch's: jaxlib does not
read it. On real hosts the hostname must resolve to an address the peers can
reach, too.

`close()` removes everything `open()` made, whatever state it reached; it is
safe to call twice. `leftovers(prefix)` lists what a killed owner left.
"""

from __future__ import annotations

import fcntl
import heapq
import ipaddress
import itertools
import os
import select
import shutil
import socket
import struct
import subprocess
import threading
import time

_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_NETNS_ETC = "/etc/netns"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def namespaces() -> list[str]:
    """Names of the machine's named network namespaces."""
    out = subprocess.run(["ip", "netns", "list"], check=True, capture_output=True, text=True)
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]


def leftovers(prefix: str) -> list[str]:
    """Namespaces and /etc/netns entries named `<prefix>-*` (what cleanup must remove)."""
    found = [n for n in namespaces() if n.startswith(prefix + "-")]
    if os.path.isdir(_NETNS_ETC):
        found += [
            os.path.join(_NETNS_ETC, n)
            for n in os.listdir(_NETNS_ETC)
            if n.startswith(prefix + "-")
        ]
    return sorted(found)


def remove(prefix: str) -> None:
    """Deletes every namespace and /etc/netns entry named `<prefix>-*`."""
    for name in leftovers(prefix):
        if name.startswith(_NETNS_ETC):
            shutil.rmtree(name)
        else:
            _ip("netns", "delete", name)


class _DelaySwitch:
    """Forwards IPv4 packets between TUN devices, each after `delay_s`."""

    def __init__(self, fds: dict[bytes, int], delay_s: float):
        self._fds = fds  # Destination address (4 bytes) -> that host's TUN fd.
        self._delay_s = delay_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="delay-switch", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        try:
            self._forward()
        except BaseException as e:  # Raised by close(): a dead switch is no network.
            self.error = e
            raise

    def _forward(self) -> None:
        pending: list[tuple[float, int, int, bytes]] = []
        order = itertools.count()
        readers = list(self._fds.values())
        while not self._stop.is_set():
            now = time.monotonic()
            while pending and pending[0][0] <= now:
                _, _, fd, packet = heapq.heappop(pending)
                try:
                    os.write(fd, packet)
                except OSError:
                    pass  # The destination's link is down (EIO): the packet is lost, as on a wire.
            timeout = min(0.05, max(0.0, pending[0][0] - now)) if pending else 0.05
            ready, _, _ = select.select(readers, [], [], timeout)
            now = time.monotonic()
            for fd in ready:
                packet = os.read(fd, 65536)
                # IPv4 only (the hosts' addresses); IPv6 router solicitations and the like go nowhere.
                if len(packet) >= 20 and packet[0] >> 4 == 4:
                    target = self._fds.get(packet[16:20])
                    if target is not None:
                        heapq.heappush(pending, (now + self._delay_s, next(order), target, packet))


class HostNetwork:
    """Namespaces `<prefix>-h0..h{N-1}` joined by a bridge (or a delaying switch)."""

    def __init__(self, prefix: str, num_hosts: int, subnet: str, delay_ms: float = 0.0):
        self.prefix = prefix
        self.hosts = [f"{prefix}-h{i}" for i in range(num_hosts)]
        self.hub = f"{prefix}-hub"
        network = ipaddress.ip_network(subnet)
        usable = list(itertools.islice(network.hosts(), num_hosts))
        if len(usable) < num_hosts:
            raise ValueError(
                f"subnet {subnet} has room for {len(usable)} hosts. Received: {num_hosts}"
            )
        self.addresses = [str(a) for a in usable]
        self._prefixlen = network.prefixlen
        self._delay_ms = delay_ms
        self._tun_fds: list[int] = []
        self._switch: _DelaySwitch | None = None

    def open(self) -> HostNetwork:
        try:
            self._open()
        except BaseException:
            self.close()
            raise
        return self

    def _open(self) -> None:
        if self._delay_ms == 0:
            _ip("netns", "add", self.hub)
            _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.hub, "link", "set", "br0", "up")
        fds = {}
        for i, (host, address) in enumerate(zip(self.hosts, self.addresses, strict=True)):
            _ip("netns", "add", host)
            _ip("-n", host, "link", "set", "lo", "up")
            if self._delay_ms == 0:
                _ip(
                    "-n",
                    self.hub,
                    "link",
                    "add",
                    f"v{i}",
                    "type",
                    "veth",
                    "peer",
                    "eth0",
                    "netns",
                    host,
                )
                _ip("-n", self.hub, "link", "set", f"v{i}", "master", "br0", "up")
            else:
                # Made here (this process holds the fd), then moved into the host's namespace.
                name = f"pft{os.getpid() % 100000}x{i}"
                fd = os.open("/dev/net/tun", os.O_RDWR)
                self._tun_fds.append(fd)
                fcntl.ioctl(
                    fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TUN | _IFF_NO_PI)
                )
                _ip("link", "set", name, "netns", host)
                _ip("-n", host, "link", "set", name, "name", "eth0")
                fds[socket.inet_aton(address)] = fd
            _ip("-n", host, "addr", "add", f"{address}/{self._prefixlen}", "dev", "eth0")
            _ip("-n", host, "link", "set", "eth0", "up")
            self._write_hosts_file(host, address)
        if self._delay_ms > 0:
            self._switch = _DelaySwitch(fds, self._delay_ms / 1000)
            self._switch.start()

    def _write_hosts_file(self, host: str, address: str) -> None:
        os.makedirs(os.path.join(_NETNS_ETC, host), exist_ok=True)
        lines = ["127.0.0.1 localhost", f"{address} {socket.gethostname()}"]
        lines += [f"{a} {h}" for h, a in zip(self.hosts, self.addresses, strict=True)]
        with open(os.path.join(_NETNS_ETC, host, "hosts"), "w") as f:
            f.write("\n".join(lines) + "\n")

    def exec_prefix(self, index: int) -> list[str]:
        """The command prefix that runs a program on host `index`."""
        return ["ip", "netns", "exec", self.hosts[index]]

    def close(self) -> None:
        """Removes the namespaces, their links, the bridge and the hosts files.

        Raises:
          RuntimeError: the delaying switch had failed (the run had no network).
        """
        switch, self._switch = self._switch, None
        if switch is not None:
            switch.stop()
        for fd in self._tun_fds:
            os.close(fd)  # A TUN device goes with its last fd.
        self._tun_fds = []
        remove(self.prefix)
        if switch is not None and switch.error is not None:
            raise RuntimeError(f"the delaying switch failed: {switch.error!r}") from switch.error
