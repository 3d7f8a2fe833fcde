"""Training's outcome -> the process' exit code (0, 2, 75 or 1; see the README)."""

from __future__ import annotations

import sys
from collections.abc import Callable

import jax
from absl import logging

from launcher import distributed
from launcher.exits import EXIT_FAILURE, EXIT_PREEMPTED, EXIT_USAGE, exit_now


def run(train: Callable[[], object]) -> None:
    """Runs `train()` and leaves with the code its outcome calls for.

    Imports the trainer's exceptions here: they import Keras, which must wait
    for the JAX configuration of `distributed.initialize`.
    """
    from checkpointing import CheckpointMismatchError  # noqa: PLC0415
    from checkpointing.events import emit  # noqa: PLC0415
    from configs.validation import ConfigError  # noqa: PLC0415
    from trainer.preemption import Preempted  # noqa: PLC0415

    try:
        train()
    except Preempted as e:
        logging.warning("%s; relaunch the same command to resume", e)
        emit("preempted", step=e.step)
        emit("end", code=EXIT_PREEMPTED)
        sys.exit(EXIT_PREEMPTED)
    except (CheckpointMismatchError, ConfigError) as e:
        emit("failed", error=f"{type(e).__name__}: {e}")
        emit("end", code=EXIT_USAGE)
        # Bad input found once data or checkpoints are read (a split too small
        # for the config, another model's checkpoints), raised on every
        # process: one line, exit 2, without JAX's exit-time barrier.
        if logging.get_verbosity() >= 1:
            logging.exception("bad input on process %d", jax.process_index())
        print(f"launcher: {e}", file=sys.stderr)
        distributed.leave_together("bad_input")
        exit_now(EXIT_USAGE)
    except Exception as e:  # Logged, then the process leaves at once.
        logging.exception("training failed on process %d", jax.process_index())
        emit("failed", error=f"{type(e).__name__}: {e}"[:500])
        emit("end", code=EXIT_FAILURE)
        exit_now(EXIT_FAILURE)
    else:
        emit("end", code=0)
