"""Child process of test_disk.py: trains while a real disk fault is injected.

    python -m tests.faults.disk_worker WORKDIR FAULT ON_WRITE_ERROR

Trains the tiny model of tests/checkpointing/common.py for 24 steps with
`OrbaxCheckpoint(WORKDIR/ckpt, save_freq=4)`. At global step 8, once step 4
is committed, it records the manifest hashes (WORKDIR/before.json) and
injects FAULT for real, just before the save of step 8:

- "readonly": chmod 0o555 of the checkpoint directory. The process must not
  be able to override file permissions (not root, or root without
  CAP_DAC_OVERRIDE): creating the step directory then fails with EACCES.
- "fsize": the soft RLIMIT_FSIZE lowered to 64 bytes, SIGXFSZ ignored: a
  write past 64 bytes fails with EFBIG ("File too large").

With ON_WRITE_ERROR="warn" the fault is lifted at step 12 (chmod 0o755, the
soft limit back to the hard one) and training goes on. Exits 0 if `fit`
returned, 1 with a traceback if it raised.
"""

import hashlib
import json
import os
import resource
import signal
import sys
import traceback
from pathlib import Path

import keras

import checkpointing
from checkpointing import manifest
from tests.checkpointing.common import make_data, make_model

INJECT_AT = 8
LIFT_AT = 12
FSIZE_LIMIT = 64
BARRIER_TIMEOUT_S = 30


def manifest_hashes(directory: Path) -> dict[str, str]:
    return {
        str(s.step): hashlib.sha256(
            manifest.manifest_path(directory / str(s.step)).read_bytes()
        ).hexdigest()
        for s in checkpointing.list_steps(directory)
    }


class Fault(keras.callbacks.Callback):
    def __init__(self, workdir: Path, directory: Path, fault: str, lift: bool, ckpt):
        super().__init__()
        self.workdir, self.directory, self.fault, self.lift, self.ckpt = (
            workdir,
            directory,
            fault,
            lift,
            ckpt,
        )

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations)
        if step == INJECT_AT:
            self.ckpt.wait_until_finished()  # Step 4 is committed.
            (self.workdir / "before.json").write_text(json.dumps(manifest_hashes(self.directory)))
            self._set(on=True)
        elif step == LIFT_AT and self.lift:
            self.ckpt.wait_until_finished()  # The write of step 8 has failed.
            self._set(on=False)

    def _set(self, on: bool) -> None:
        print(f"disk_worker: fault {self.fault} {'on' if on else 'off'}", flush=True)
        if self.fault == "readonly":
            os.chmod(self.directory, 0o555 if on else 0o755)
        else:
            _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
            resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT if on else hard, hard))


def main(workdir: str, fault: str, on_write_error: str) -> None:
    workdir = Path(workdir)
    directory = workdir / "ckpt"
    if fault == "fsize":
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a core dump.
    x, y = make_data()
    model = make_model()
    ckpt = checkpointing.OrbaxCheckpoint(
        directory,
        save_freq=4,
        max_to_keep=None,
        on_write_error=on_write_error,
        barrier_timeout_s=BARRIER_TIMEOUT_S,
    )
    fault_cb = Fault(workdir, directory, fault, on_write_error == "warn", ckpt)
    # The fault callback runs first: the fault is on before the save of step 8.
    try:
        model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[fault_cb, ckpt])
    except Exception:
        traceback.print_exc()
        status = 1
    else:
        print(f"disk_worker: done, failed steps {ckpt.failed_steps}", flush=True)
        status = 0
    # After a step directory could not be created, Orbax's other handlers
    # wait for its "created" signal for 300 s (a constant) on non-daemon
    # threads, which a normal interpreter exit would wait for.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    main(*sys.argv[1:])
