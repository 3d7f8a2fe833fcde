"""Configs compared by hash: a constant number of coordination calls per process.

N processes are threads here, around an in-memory stand-in for the JAX
coordination service client (its key-value store and barriers); the real
thing runs in tests/launcher/test_main.py's multi-process test.
"""

import collections
import threading

import jax
import pytest
from jax._src import distributed as jax_distributed

from launcher.config_check import check_same_config
from launcher.usage import UsageError


class _FakeClient:
    """The coordination client calls `check_same_config` makes, counted by caller."""

    def __init__(self, processes: int):
        self._values: dict[str, str] = {}
        self._changed = threading.Condition()
        self._barriers = collections.defaultdict(lambda: threading.Barrier(processes))
        self._lock = threading.Lock()
        self.calls = collections.Counter()
        self.local = threading.local()

    def _count(self):
        self.calls[self.local.process] += 1

    def key_value_set(self, key, value):
        self._count()
        with self._changed:
            assert key not in self._values, key
            self._values[key] = value
            self._changed.notify_all()

    def blocking_key_value_get(self, key, timeout_ms):
        self._count()
        with self._changed:
            if not self._changed.wait_for(lambda: key in self._values, timeout_ms / 1000):
                raise jax.errors.JaxRuntimeError(f"DEADLINE_EXCEEDED: {key}")
            return self._values[key]

    def key_value_dir_get(self, prefix):
        self._count()
        with self._changed:
            return [(k, v) for k, v in self._values.items() if k.startswith(prefix)]

    def key_value_increment(self, key, amount):
        self._count()
        with self._changed:
            value = int(self._values.get(key, "0")) + amount
            self._values[key] = str(value)
            return value

    def key_value_delete(self, key):
        self._count()
        with self._changed:
            for k in [k for k in self._values if k == key or k.startswith(key)]:
                del self._values[k]

    def wait_at_barrier(self, name, timeout_ms):
        self._count()
        with self._lock:
            barrier = self._barriers[name]
        barrier.wait(timeout_ms / 1000)


def _run(monkeypatch, configs: list[dict]):
    client = _FakeClient(len(configs))
    monkeypatch.setattr(jax_distributed.global_state, "client", client)
    outcomes = [None] * len(configs)

    def process(index):
        client.local.process = index
        try:
            check_same_config(configs[index], 30, process_index=index, process_count=len(configs))
            outcomes[index] = "ok"
        except UsageError as e:
            outcomes[index] = str(e)

    threads = [threading.Thread(target=process, args=(i,)) for i in range(len(configs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    return outcomes, client.calls


def _config(learning_rate=1e-3, epochs=3):
    return {"optimizer": {"learning_rate": learning_rate}, "trainer": {"epochs": epochs}}


@pytest.mark.parametrize("processes", [2, 4, 8])
def test_same_config_calls_do_not_grow_with_processes(monkeypatch, processes):
    outcomes, calls = _run(monkeypatch, [_config()] * processes)
    assert outcomes == ["ok"] * processes
    assert calls[0] == 4  # Two values published, one barrier, one read of mismatches.
    # One read and one read-count of the hash (the last reader also deletes
    # the keys), one barrier, one read of mismatches.
    others = sorted(calls[i] for i in range(1, processes))
    assert others == [4] * (processes - 2) + [5], calls


@pytest.mark.parametrize("processes", [2, 4, 8])
def test_a_differing_process_stops_every_process_with_one_line(monkeypatch, processes):
    configs = [_config()] * processes
    configs[1] = _config(learning_rate=0.1)
    configs[-1] = _config(epochs=7) if processes > 2 else configs[-1]
    outcomes, calls = _run(monkeypatch, configs)
    line = (
        "config.optimizer.learning_rate differs between processes: process 0 has 0.001. "
        "Received: process 1 has optimizer.learning_rate=0.1"
    )
    assert outcomes == [line] * processes  # The lowest differing process' line, everywhere.
    assert calls[0] == 4
    differing = {1, processes - 1}
    # A differing process also reads process 0's config (one read, one
    # read-count, maybe the deletion) and publishes its line.
    assert all(calls[i] <= (9 if i in differing else 5) for i in range(1, processes)), calls
    assert all(calls[i] >= (7 if i in differing else 4) for i in range(1, processes)), calls
