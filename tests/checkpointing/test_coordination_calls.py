"""Coordination-service calls per save and per restore do not grow with the process count.

2, 4 and 8 real processes (one CPU device each) run tests/checkpointing/
count_worker.py: 3 saves and one `restore_latest`, with every call of the
coordination-service client counted (Orbax's own barriers and key-value
calls included). A process other than 0 must make as many rounds with 8
processes as with 2; process 0 at most linearly more.
"""

import json
import sys

import portpicker
import pytest

from tests.checkpointing import procs

pytestmark = pytest.mark.multiprocess

WORKER = procs.WORKER.with_name("count_worker.py")
COUNTS = (2, 4, 8)


def _run(tmp_path, n: int) -> list[dict]:
    directory, out, logs = tmp_path / f"ckpt{n}", tmp_path / f"out{n}", tmp_path / f"logs{n}"
    out.mkdir()
    port = portpicker.pick_unused_port()
    commands = [
        [
            sys.executable,
            str(WORKER),
            f"--process_id={i}",
            f"--num_processes={n}",
            f"--port={port}",
            f"--directory={directory}",
            f"--out={out}",
        ]
        for i in range(n)
    ]
    codes = procs.run_all(commands, logs, timeout_s=150)
    assert codes == [0] * n, procs.tails(logs, n)
    return [json.loads((out / f"calls_p{i}.json").read_text()) for i in range(n)]


def test_calls_per_save_and_restore_are_flat_in_the_process_count(tmp_path):
    runs = {n: _run(tmp_path, n) for n in COUNTS}
    for n, results in runs.items():
        assert [r["step"] for r in results] == [6] * n  # Every save committed, restored.
        for phase in ("fit", "restore"):
            rounds = [r[phase]["rounds"] for r in results]
            print(f"{n} processes, {phase}: rounds per process {rounds}")
    for phase in ("fit", "restore"):
        others = {n: max(r[phase]["rounds"] for r in runs[n][1:]) for n in COUNTS}
        first = {n: runs[n][0][phase]["rounds"] for n in COUNTS}
        # With 2 processes, process 1 is always the last to arrive, which
        # makes the most calls (it completes a gather, deletes a shared key).
        assert all(others[n] <= others[2] for n in COUNTS), (phase, others)
        assert all(first[n] <= first[2] * n / 2 for n in COUNTS), (phase, first)
        assert all(others[n] > 0 and first[n] > 0 for n in COUNTS), (phase, others, first)
