"""The SIGTERM-while-joining guard comes off before JAX's preemption service goes on.

JAX's preemption notifier installs its own C-level SIGTERM handler; restoring
a Python handler after it would replace it (and SIGTERM would then kill the
process instead of stopping at an agreed step). See
tests/faults/test_preemption.py for the real processes.
"""

import ipaddress
import signal
import threading

import jax
import pytest
from jax._src import distributed as jax_distributed

from launcher import distributed, joining
from launcher.usage import UsageError


def _watchers() -> list:
    return [t for t in threading.enumerate() if t.name == "sigterm-while-joining"]


def test_guard_is_removed_before_the_preemption_service_starts(monkeypatch):
    before = signal.getsignal(signal.SIGTERM)
    seen = {}

    def initialize(**kwargs):
        seen["kwargs"] = kwargs
        seen["service_during_join"] = jax.config.jax_enable_preemption_service
        seen["handler_during_join"] = signal.getsignal(signal.SIGTERM)
        seen["watchers_during_join"] = len(_watchers())

    def start_service():
        seen["handler_at_service_start"] = signal.getsignal(signal.SIGTERM)
        seen["service_flag_at_start"] = jax.config.jax_enable_preemption_service

    monkeypatch.setattr(jax.distributed, "initialize", initialize)
    monkeypatch.setattr(
        jax_distributed.global_state, "initialize_preemption_sync_manager", start_service
    )
    joining.join_with_deadline(30, coordinator_address="localhost:1", num_processes=2)

    assert seen["kwargs"] == {"coordinator_address": "localhost:1", "num_processes": 2}
    assert seen["service_during_join"] is False  # JAX must not install its handler yet.
    assert seen["handler_during_join"] not in (before, signal.SIG_DFL)
    assert seen["watchers_during_join"] == 1
    assert seen["handler_at_service_start"] == before  # Ours is gone when JAX's goes on.
    assert seen["service_flag_at_start"] is True
    assert signal.getsignal(signal.SIGTERM) == before
    assert signal.set_wakeup_fd(-1) == -1  # The previous (no) wakeup fd is back.
    for t in _watchers():
        t.join(timeout=5)
    assert not _watchers()


def test_service_disabled_stays_disabled(monkeypatch):
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: None)
    started = []
    monkeypatch.setattr(
        jax_distributed.global_state,
        "initialize_preemption_sync_manager",
        lambda: started.append(True),
    )
    jax.config.update("jax_enable_preemption_service", False)
    try:
        joining.join_with_deadline(30)
        assert jax.config.jax_enable_preemption_service is False
    finally:
        jax.config.update("jax_enable_preemption_service", True)
    assert not started


def test_a_failed_join_restores_everything(monkeypatch):
    before = signal.getsignal(signal.SIGTERM)

    def initialize(**kwargs):
        raise RuntimeError("DEADLINE_EXCEEDED")

    monkeypatch.setattr(jax.distributed, "initialize", initialize)
    with pytest.raises(RuntimeError, match="DEADLINE_EXCEEDED"):
        joining.join_with_deadline(30)
    assert signal.getsignal(signal.SIGTERM) == before
    assert jax.config.jax_enable_preemption_service is True
    assert signal.set_wakeup_fd(-1) == -1


# --local_device_ids and where the coordination service listens.


@pytest.mark.parametrize(
    "address, expected",
    [
        ("localhost:1234", "127.0.0.1:1234"),
        ("127.0.0.1:1234", "127.0.0.1:1234"),
        ("127.0.0.5:99", "127.0.0.5:99"),
        ("[::1]:1234", "[::1]:1234"),
        ("10.0.0.2:1234", None),  # A cluster address: every interface (JAX's default).
        ("podfit-0.podfit:1234", None),
        (None, None),
    ],
)
def test_loopback_coordinator_binds_loopback_only(monkeypatch, address, expected):
    monkeypatch.delenv("JAX_COORDINATOR_BIND_ADDRESS", raising=False)
    assert distributed.loopback_bind_address(address) == expected


def test_an_explicit_bind_address_is_left_to_jax(monkeypatch):
    monkeypatch.setenv("JAX_COORDINATOR_BIND_ADDRESS", "0.0.0.0:1234")
    assert distributed.loopback_bind_address("localhost:1234") is None


def _flags(**kwargs) -> distributed.DistributedFlags:
    return distributed.DistributedFlags(None, None, None, None, **kwargs)


@pytest.mark.parametrize("text, ids", [("0", (0,)), ("0,1", (0, 1)), (" 3, 1 ", (3, 1))])
def test_local_device_ids_parse(text, ids):
    assert _flags(local_device_ids=text).device_ids() == ids
    assert _flags().device_ids() is None


@pytest.mark.parametrize("text", ["", "a", "0,,1", "-1", "0,0", "1.5"])
def test_bad_local_device_ids_name_the_flag_and_the_value(text):
    with pytest.raises(UsageError) as e:
        _flags(local_device_ids=text).check()
    message = str(e.value)
    assert "\n" not in message
    assert "--local_device_ids" in message and f"Received: local_device_ids={text!r}" in message


def _joined(monkeypatch, flags, cluster=False) -> list:
    calls = []
    monkeypatch.delenv("JAX_COORDINATOR_BIND_ADDRESS", raising=False)
    monkeypatch.setattr(distributed, "join_with_deadline", lambda s, **kw: calls.append(kw))
    monkeypatch.setattr(distributed, "_cluster_detected", lambda: cluster)
    distributed.initialize(flags)
    return calls


def test_local_run_passes_device_ids_and_loopback_bind(monkeypatch):
    flags = distributed.DistributedFlags("localhost:77", 2, 1, None, local_device_ids="1")
    [kwargs] = _joined(monkeypatch, flags)
    assert kwargs["coordinator_address"] == "localhost:77"
    assert kwargs["coordinator_bind_address"] == "127.0.0.1:77"
    assert kwargs["local_device_ids"] == [1]


def test_cluster_address_keeps_jax_default_bind(monkeypatch):
    flags = distributed.DistributedFlags("10.1.2.3:77", 2, 0, None)
    [kwargs] = _joined(monkeypatch, flags)
    assert "coordinator_bind_address" not in kwargs and "local_device_ids" not in kwargs


def test_detected_cluster_gets_the_device_ids(monkeypatch):
    [kwargs] = _joined(monkeypatch, _flags(local_device_ids="2,3"), cluster=True)
    assert kwargs["local_device_ids"] == [2, 3]
    assert "coordinator_address" not in kwargs  # JAX finds it (SLURM, Open MPI, TPU...).


def test_env_local_device_ids_is_read_and_checked(monkeypatch):
    monkeypatch.setenv("JAX_LOCAL_DEVICE_IDS", "0,1")
    assert _flags(local_device_ids=distributed.local_device_ids_text(None)).device_ids() == (0, 1)
    assert distributed.local_device_ids_text("2") == "2"  # The flag wins.
    monkeypatch.setenv("JAX_LOCAL_DEVICE_IDS", "gpu0")
    with pytest.raises(UsageError, match="Received: local_device_ids='gpu0'"):
        _flags(local_device_ids=distributed.local_device_ids_text(None)).check()


def _listening(port: int) -> list[ipaddress.IPv4Address]:
    """The addresses listening on `port` (from /proc/net/tcp{,6}; v4-mapped v6 as v4)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.rsplit(":", 1)
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    # The kernel writes each 32-bit word in host (little-endian) order.
                    raw = b"".join(
                        bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, len(address), 8)
                    )
                    ip = ipaddress.ip_address(raw)
                    found.append(getattr(ip, "ipv4_mapped", None) or ip)
    return found


def test_the_coordination_service_really_listens_on_loopback_only():
    import portpicker
    from jax._src.lib import _jax

    port = portpicker.pick_unused_port()
    bind = distributed.loopback_bind_address(f"localhost:{port}")
    # What jax.distributed.initialize starts on process 0, with our bind address.
    service = _jax.get_distributed_runtime_service(bind, 1)
    try:
        # 127.0.0.1 alone, nothing on other interfaces.
        assert _listening(port) == [ipaddress.ip_address("127.0.0.1")]
    finally:
        service.shutdown()
    port = portpicker.pick_unused_port()
    service = _jax.get_distributed_runtime_service(f"[::]:{port}", 1)  # JAX's default.
    try:
        assert _listening(port) == [ipaddress.ip_address("::")]  # Every interface.
    finally:
        service.shutdown()
