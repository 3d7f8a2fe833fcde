"""podfit entrypoint: flags -> distributed init -> one topology line -> trainer -> summary.

  python -m launcher.main --config=configs/lm.py --workdir=DIR [--config.x=v ...]

The distributed flags (--coordinator_address, --num_processes, --process_id,
--num_cpu_devices, --local_device_ids, timeouts) are in launcher/distributed.py.
Exit codes: 0 done, 2 bad flags or config, or a workdir holding another model's checkpoint
(one line on stderr), 75 preempted (SIGTERM, also while joining: relaunch to
resume), anything else a failure (see the process' log).
"""

from __future__ import annotations

import time

_STARTED = time.time()  # The run's event log starts here (launcher/events.py).

import os  # noqa: E402

os.environ.setdefault("KERAS_BACKEND", "jax")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from launcher import distributed, events, logs, outcome, summary, usage, workdir  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/lm.py or configs/lm.py:tiny."
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory or bucket URL (gs://...) for checkpoints and metrics."
)
_LOGDIR = flags.DEFINE_string(
    "logdir", None, "Local folder for per-process logs (default: <workdir>/logs, or a temp folder)."
)


def main(argv: list[str]) -> None:
    started = time.monotonic()
    config, dist = _CONFIG.value, distributed.DistributedFlags.from_flags()
    logs.early(dist.process_id)
    usage.check_command_line(argv, config, dist.check, dist.num_processes)
    run_dir = workdir.writable_or_exit(_WORKDIR.value)
    recorder = events.record(_STARTED)
    distributed.initialize(dist)
    import jax  # noqa: PLC0415  (after the JAX configuration above)

    log_dir = workdir.log_dir(_WORKDIR.value, _LOGDIR.value)
    log_path = logs.setup(jax.process_index(), log_dir)
    events.joined(recorder, run_dir, dist.init_timeout_s)
    usage.check_on_devices(config, dist.heartbeat_timeout_s)
    logging.info("%s; log file %s", distributed.topology_line(dist.device_ids()), log_path)
    summary.show_start(config, run_dir, log_dir)
    from trainer.train import train  # noqa: PLC0415  (imports Keras with the JAX backend)

    outcome.run(lambda: summary.show_end(config, run_dir, train(config, run_dir), started, recorder.flush))  # fmt: skip


if __name__ == "__main__":
    app.run(main, flags_parser=usage.parse_flags)
