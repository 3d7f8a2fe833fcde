"""Child process of test_disk.py: trains while a real disk fault is injected.

    python -m tests.faults.disk_worker WORKDIR FAULT

Trains the tiny model of tests/checkpointing/common.py for 24 steps with
`OrbaxCheckpoint(WORKDIR/ckpt, save_freq=4)`. At global step 8, once step 4
is committed, it records the manifest hashes (WORKDIR/before.json) and
injects FAULT for real, just before the save of step 8:

- "readonly": chmod 0o555 of the checkpoint directory. The process must not
  be able to override file permissions (not root, or root without
  CAP_DAC_OVERRIDE): creating the step directory then fails with EACCES.
- "fsize": the soft RLIMIT_FSIZE lowered to 64 bytes, SIGXFSZ ignored: a
  write past 64 bytes fails with EFBIG ("File too large").

Exits 0 if `fit` returned, 1 with a traceback if it raised.
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
    def __init__(self, workdir: Path, directory: Path, fault: str, ckpt):
        super().__init__()
        self.workdir, self.directory, self.fault, self.ckpt = workdir, directory, fault, ckpt

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations)
        if step == INJECT_AT:
            self.ckpt.wait_until_finished()  # Step 4 is committed.
            (self.workdir / "before.json").write_text(json.dumps(manifest_hashes(self.directory)))
            print(f"disk_worker: fault {self.fault} on", flush=True)
            if self.fault == "readonly":
                os.chmod(self.directory, 0o555)
            else:
                _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
                resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT, hard))


def main(workdir: str, fault: str) -> None:
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
        barrier_timeout_s=BARRIER_TIMEOUT_S,
    )
    fault_cb = Fault(workdir, directory, fault, ckpt)
    # The fault callback runs first: the fault is on before the save of step 8.
    try:
        model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[fault_cb, ckpt])
    except Exception:
        traceback.print_exc()
        status = 1
    else:
        print("disk_worker: done", flush=True)
        status = 0
    # After a step directory could not be created, Orbax's other handlers
    # wait for its "created" signal for 300 s (a constant) on non-daemon
    # threads, which a normal interpreter exit would wait for.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    main(*sys.argv[1:])
