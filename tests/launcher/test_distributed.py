"""The SIGTERM-while-joining guard comes off before JAX's preemption service goes on.

JAX's preemption notifier installs its own C-level SIGTERM handler; restoring
a Python handler after it would replace it (and SIGTERM would then kill the
process instead of stopping at an agreed step). See
tests/faults/test_preemption.py for the real processes.
"""

import signal
import threading

import jax
import pytest
from jax._src import distributed as jax_distributed

from launcher import joining


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
