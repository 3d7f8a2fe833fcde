"""The run's first console line (what runs where) and its last (what came out).

Process 0 prints them through `trainer.console`; every process logs its
own topology line to its log file. Imported before the JAX configuration:
JAX is imported inside `show_start` and `show_end` only.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Callable

from absl import flags, logging
from etils import epath
from ml_collections import config_flags

from trainer import console

_MAX_OVERRIDES_CHARS = 100


def total_steps(config) -> int:
    """Optimizer steps of the whole run (batches // gradient accumulation)."""
    tr = config.trainer
    return tr.epochs * tr.steps_per_epoch // config.optimizer.gradient_accumulation_steps


def show_start(config, run_dir: epath.Path, log_dir: str) -> None:
    """The start line on process 0, from the joined job and the --config flag."""
    import jax  # noqa: PLC0415  (after the JAX configuration)

    if jax.process_index() != 0:
        return
    flag = flags.FLAGS["config"]
    start_line(
        process_count=jax.process_count(),
        local_devices=jax.local_device_count(),
        device_count=jax.device_count(),
        platform=jax.devices()[0].platform,
        config=config_text(
            config_flags.get_config_filename(flag), config_flags.get_override_values(flag)
        ),
        total_steps=total_steps(config),
        workdir=str(run_dir),
        log_dir=log_dir,
    )


def show_end(
    config, run_dir: epath.Path, result, started: float, flush_events: Callable[[], None]
) -> None:
    """The summary on process 0 of a finished `trainer.train` (its `TrainResult`).

    Every process first warns of the event listeners that failed (event log,
    TensorBoard, progress: `checkpointing.events.failures`). The summary is
    reporting: what fails in it is a warning, the run's outcome stays.

    Args:
        flush_events: Writes this launch's events so far (on gs:// they are
            otherwise rewritten every 30 s), before the goodput is read.
    """
    import jax  # noqa: PLC0415

    from checkpointing import events, layout  # noqa: PLC0415  (imports Keras)

    for failure in events.failures():
        logging.warning("reporting incomplete: %s", failure)
    if jax.process_index() != 0:
        return
    try:
        flush_events()
    except Exception as e:  # noqa: BLE001 - shown; the goodput then misses the last events.
        logging.warning("could not write the event log before the summary: %r", e)
    committed = []
    if config.checkpoint.enabled:
        try:  # A listing, no reads: the other processes may be leaving already.
            committed = [m.step for m in layout.committed_steps(run_dir / "checkpoints")]
        except Exception as e:  # noqa: BLE001 - shown; training's outcome stays.
            logging.warning("could not list the committed checkpoints for the summary: %r", e)
    end_lines(
        start_step=result.start_step,
        final_step=result.final_step,
        total_steps=total_steps(config),
        started=started,
        workdir=run_dir,
        committed=committed,
    )


def config_text(filename: str, overrides: dict) -> str:
    """`configs/lm.py:tiny (trainer.epochs=3, ...)`: the file and the flags that changed it."""
    if not overrides:
        return filename
    shown = ", ".join(f"{k}={v}" for k, v in overrides.items())
    if len(shown) > _MAX_OVERRIDES_CHARS:
        shown = shown[: _MAX_OVERRIDES_CHARS - 3] + "..."
    return f"{filename} ({shown})"


def start_line(
    *,
    process_count: int,
    local_devices: int,
    device_count: int,
    platform: str,
    config: str,
    total_steps: int,
    workdir: str,
    log_dir: str,
) -> None:
    """`podfit: 240 steps of configs/lm.py on 8 cpu devices (2 processes x 4); ...`."""
    if local_devices * process_count == device_count:
        hosts = f"{process_count} process{'es' if process_count > 1 else ''} x {local_devices}"
    else:
        hosts = f"{process_count} processes, {local_devices} on process 0"
    console.info(
        "podfit: %d steps of %s on %d %s device%s (%s); workdir %s; logs %s/process_N.log",
        total_steps,
        config,
        device_count,
        platform,
        "" if device_count == 1 else "s",
        hosts,
        workdir,
        log_dir,
    )


def goodput(workdir: epath.PathLike) -> float | None:
    """The run's goodput (0 to 1) across every launch of `workdir`, or None if unknown.

    From the run's event log (`launcher.report.summarize`), read before this
    launch's `end` event: its last event so far ends it. None when the log
    holds no finished step yet (`ReportError`).
    """
    from launcher import report  # noqa: PLC0415  (matplotlib is imported only to draw)

    try:
        return report.summarize(workdir).goodput
    except report.ReportError:
        return None
    except Exception as e:  # noqa: BLE001 - shown; training's outcome stays.
        logging.warning("goodput unavailable: %r", e)
        return None


def end_lines(
    *,
    start_step: int,
    final_step: int,
    total_steps: int,
    started: float,
    workdir: epath.Path,
    committed: list[int],
) -> None:
    """The summary: steps, wall time, goodput, where the model is and how to load it.

    Args:
      started: `time.monotonic()` when the launcher started.
      committed: The committed checkpoint steps (ascending), [] without checkpoints.
    """
    wall = time.monotonic() - started
    if final_step == start_step:
        trained = f"nothing left to train at step {final_step}/{total_steps}"
    elif start_step:
        trained = f"trained steps {start_step + 1}-{final_step} of {total_steps}"
    else:
        trained = f"trained {final_step}/{total_steps} steps"
    figure = goodput(workdir)
    shown = "" if figure is None else f", goodput {100 * figure:.1f}%"
    console.info("done: %s in %s%s", trained, console.duration(wall), shown)
    checkpoints = workdir / "checkpoints"
    if committed:
        console.info("model: %s (the last committed step)", checkpoints / str(committed[-1]))
        console.info(
            "load it: checkpointing.load_model(%r) in Python, or %s -m checkpointing export %s "
            "model.keras",
            str(checkpoints),
            _python(),
            shlex.quote(str(checkpoints)),
        )
    else:
        console.info("model: no checkpoint written (config.checkpoint.enabled is False)")


def _python() -> str:
    """This interpreter as a command to copy: relative when under the current folder."""
    relative = os.path.relpath(sys.executable)
    return shlex.quote(sys.executable if relative.startswith("..") else relative)
