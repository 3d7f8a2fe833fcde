"""podfit entrypoint: flags -> distributed init -> one topology line -> trainer.

  python -m launcher.main --config=configs/lm.py --workdir=DIR [--config.x=v ...]

The distributed flags (--coordinator_address, --num_processes, --process_id,
--num_cpu_devices, timeouts) are in launcher/distributed.py. Exit codes: 0
done, 2 bad flags or config, or a workdir holding another model's checkpoint
(one line on stderr), 75 preempted (SIGTERM, also while joining: relaunch to
resume), anything else a failure (see the process' log).
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from launcher import distributed, logs, outcome, usage  # noqa: E402
from launcher.workdir import writable  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/lm.py or configs/lm.py:tiny."
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, metrics and logs (local or gs://)."
)


def main(argv: list[str]) -> None:
    config, dist = _CONFIG.value, distributed.DistributedFlags.from_flags()
    usage.check_command_line(argv, config, dist.check, dist.num_processes)
    workdir = writable(_WORKDIR.value)
    distributed.initialize(dist)
    import jax  # noqa: PLC0415  (after the JAX configuration above)

    log_path = logs.setup(jax.process_index(), workdir)
    usage.check_on_devices(config, dist.heartbeat_timeout_s)
    logging.info("%s; log file %s", distributed.topology_line(), log_path)
    from trainer.train import train  # noqa: PLC0415  (imports Keras with the JAX backend)

    outcome.run(lambda: train(config, _WORKDIR.value))


if __name__ == "__main__":
    app.run(main, flags_parser=usage.parse_flags)
