"""podfit entrypoint: flags -> distributed init -> one topology line -> trainer.

  python -m launcher.main --config=configs/lm.py --workdir=DIR [--config.x=v ...]

Local multi-process simulation adds --coordinator_address, --num_processes,
--process_id and --num_cpu_devices (scripts/simulate.py sets them). With none
of them, Cloud TPU pods and clusters JAX knows are detected; otherwise one
process runs alone. Exit codes: 0 done, 2 bad flags or config, or a workdir
holding another model's checkpoint (one line on stderr), 75 preempted
(SIGTERM, also while joining: relaunch to resume), anything else a failure
(see the process' log).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from configs.validation import ConfigError, validate  # noqa: E402
from launcher import allocator, distributed, logs, workdir  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/lm.py or configs/lm.py:tiny."
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory or bucket URL (gs://...) for checkpoints and metrics."
)
_LOGDIR = flags.DEFINE_string(
    "logdir", None, "Local folder for per-process logs (default: <workdir>/logs, or a temp folder)."
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 (local runs)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job (local runs).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process' index (local runs).")
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    "heartbeat_timeout_s", 60, "Seconds without a heartbeat after which a peer counts as dead."
)
_INIT_TIMEOUT = flags.DEFINE_integer(
    "init_timeout_s", 300, "Seconds to wait at start-up for every process to join."
)
_NUM_CPU_DEVICES = flags.DEFINE_integer(
    "num_cpu_devices", None, "Simulate this many CPU devices per process."
)

EXIT_USAGE = 2
EXIT_FAILURE = 1


def _exit_now(code: int) -> None:
    """Leaves without JAX's exit-time shutdown barrier.

    After a failure a peer may be dead; waiting for it at exit would only
    delay the exit that tells the scheduler (or scripts/simulate.py) to stop
    the others. Uncommitted checkpoint writes stay invisible.
    """
    for handler in logging.get_absl_logger().handlers + [logging.get_absl_handler()]:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _usage_exit(message: str) -> None:
    print(f"launcher: {message}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


def _last_line(error: BaseException) -> str:
    """The message's last non-empty line: config_flags nests tracebacks in it."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, but bad flags exit 2 with one line instead of 1."""
    try:
        return flags.FLAGS(argv)
    except (flags.Error, ValueError, TypeError, KeyError, AttributeError, OSError) as e:
        key = e if isinstance(e, KeyError) else e.__context__
        if isinstance(key, KeyError):  # An override of a field the config lacks.
            field = str(key.args[0]).strip("'\"") if key.args else "?"
            received = " ".join(a for a in argv if a.startswith("--config.") and field in a)
            _usage_exit(f"--config: unknown config field {field!r}. Received: {received or field}")
        _usage_exit(_last_line(e))


def main(argv: list[str]) -> None:
    memory = allocator.keep_freed_memory()  # Before any large buffer exists.
    if len(argv) > 1:
        _usage_exit(f"unexpected positional arguments. Received: {argv[1:]}")
    config = _CONFIG.value
    if config is None:
        _usage_exit("--config is required. Received: --config=None")
    dist = distributed.DistributedFlags(
        _COORDINATOR.value,
        _NUM_PROCESSES.value,
        _PROCESS_ID.value,
        _NUM_CPU_DEVICES.value,
        _HEARTBEAT_TIMEOUT.value,
        _INIT_TIMEOUT.value,
    )
    try:
        dist.check()
        validate(config, num_processes=_NUM_PROCESSES.value)  # Everything that needs no device.
    except (distributed.UsageError, ConfigError) as e:
        _usage_exit(str(e))
    except OSError as e:  # config_flags defers a config file it could not load.
        _usage_exit(f"--config: {_last_line(e)}")
    try:
        run_dir = workdir.writable(_WORKDIR.value)
    except workdir.WorkdirError as e:
        _usage_exit(str(e))

    distributed.initialize(dist)
    import jax  # noqa: PLC0415  (after the JAX configuration above)

    log_path = logs.setup(jax.process_index(), workdir.log_dir(_WORKDIR.value, _LOGDIR.value))
    try:
        validate(config, num_devices=jax.device_count(), num_processes=jax.process_count())
        distributed.check_same_config(config.to_dict(), _HEARTBEAT_TIMEOUT.value)
    except (ConfigError, distributed.UsageError) as e:
        _usage_exit(str(e))
    logging.info("%s; log file %s; %s", distributed.topology_line(), log_path, memory)

    from checkpointing import CheckpointMismatchError  # noqa: PLC0415
    from trainer.preemption import EXIT_PREEMPTED, Preempted  # noqa: PLC0415
    from trainer.train import train  # noqa: PLC0415  (imports Keras with the JAX backend)

    try:
        train(config, run_dir)
    except Preempted as e:
        logging.warning("%s; relaunch the same command to resume", e)
        sys.exit(EXIT_PREEMPTED)
    except (CheckpointMismatchError, ConfigError) as e:
        # Bad input found once data or checkpoints are read (a split too small
        # for the config, another model's checkpoints), raised on every
        # process: one line, exit 2, without JAX's exit-time barrier.
        if logging.get_verbosity() >= 1:
            logging.exception("bad input on process %d", jax.process_index())
        print(f"launcher: {e}", file=sys.stderr)
        distributed.leave_together("bad_input")
        _exit_now(EXIT_USAGE)
    except Exception:  # Logged, then the process leaves at once (below).
        logging.exception("training failed on process %d", jax.process_index())
        _exit_now(EXIT_FAILURE)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
