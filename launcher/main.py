"""podfit entrypoint: flags -> distributed init -> one topology line -> trainer.

  python -m launcher.main --config=configs/lm.py --workdir=DIR [--config.x=v ...]

The distributed flags (--coordinator_address, --num_processes, --process_id,
--num_cpu_devices, --local_device_ids, timeouts) are in launcher/distributed.py.
Exit codes: 0 done, 2 bad flags or config, or a workdir holding another model's checkpoint
(one line on stderr), 75 preempted (SIGTERM, also while joining: relaunch to
resume), anything else a failure (see the process' log).
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from launcher import distributed, logs, outcome, summary, usage, workdir  # noqa: E402
from launcher.exits import usage_exit  # noqa: E402
from trainer import console  # noqa: E402  (Keras-free)

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/lm.py or configs/lm.py:tiny."
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory or bucket URL (gs://...) for checkpoints and metrics."
)
_LOGDIR = flags.DEFINE_string(
    "logdir", None, "Local folder for per-process logs (default: <workdir>/logs, or a temp folder)."
)


def _total_steps(config) -> int:
    """Optimizer steps of the whole run (batches // gradient accumulation)."""
    tr = config.trainer
    return tr.epochs * tr.steps_per_epoch // config.optimizer.gradient_accumulation_steps


def _start_line(config, run_dir, log_dir: str) -> None:
    import jax  # noqa: PLC0415  (after the JAX configuration)

    flag = flags.FLAGS["config"]
    summary.start_line(
        process_count=jax.process_count(),
        local_devices=jax.local_device_count(),
        device_count=jax.device_count(),
        platform=jax.devices()[0].platform,
        config=summary.config_text(
            config_flags.get_config_filename(flag), config_flags.get_override_values(flag)
        ),
        total_steps=_total_steps(config),
        workdir=str(run_dir),
        log_dir=log_dir,
    )


def _train_and_summarize(config, run_dir, started: float) -> None:
    import jax  # noqa: PLC0415

    from trainer.train import train  # noqa: PLC0415  (imports Keras with the JAX backend)

    result = train(config, run_dir)
    if jax.process_index() == 0:
        from checkpointing import layout  # noqa: PLC0415

        directory = run_dir / "checkpoints"
        summary.end_lines(
            start_step=result.start_step,
            final_step=result.final_step,
            total_steps=_total_steps(config),
            started=started,
            workdir=run_dir,
            # A listing (no reads): the other processes may be leaving already.
            committed=[m.step for m in layout.committed_steps(directory)]
            if config.checkpoint.enabled
            else [],
        )


def main(argv: list[str]) -> None:
    started = time.monotonic()
    config, dist = _CONFIG.value, distributed.DistributedFlags.from_flags()
    logs.early(dist.process_id)
    usage.check_command_line(argv, config, dist.check, dist.num_processes)
    try:
        console.bar_mode()  # PODFIT_PROGRESS, if set, is bar or lines.
    except ValueError as e:
        usage_exit(str(e))
    try:
        run_dir = workdir.writable(_WORKDIR.value)
    except workdir.WorkdirError as e:
        usage_exit(str(e))
    distributed.initialize(dist)
    import jax  # noqa: PLC0415  (after the JAX configuration above)

    log_dir = workdir.log_dir(_WORKDIR.value, _LOGDIR.value)
    log_path = logs.setup(jax.process_index(), log_dir)
    usage.check_on_devices(config, dist.heartbeat_timeout_s)
    logging.info("%s; log file %s", distributed.topology_line(dist.device_ids()), log_path)
    if jax.process_index() == 0:
        _start_line(config, run_dir, log_dir)
    outcome.run(lambda: _train_and_summarize(config, run_dir, started))


if __name__ == "__main__":
    app.run(main, flags_parser=usage.parse_flags)
