"""Bad flags and bad config, found before any device work: one line, exit 2."""

from __future__ import annotations

from absl import flags

from configs.validation import ConfigError, validate
from launcher.exits import usage_exit
from trainer import console  # Keras-free


class UsageError(ValueError):
    """Command-line flags that cannot work together; exit code 2."""


def last_line(error: BaseException) -> str:
    """The message's last non-empty line: config_flags nests tracebacks in it."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, but bad flags exit 2 with one line instead of 1."""
    try:
        return flags.FLAGS(argv)
    except (flags.Error, ValueError, TypeError, KeyError, AttributeError, OSError) as e:
        key = e if isinstance(e, KeyError) else e.__context__
        if isinstance(key, KeyError):  # An override of a field the config lacks.
            field = str(key.args[0]).strip("'\"") if key.args else "?"
            received = " ".join(a for a in argv if a.startswith("--config.") and field in a)
            usage_exit(f"--config: unknown config field {field!r}. Received: {received or field}")
        usage_exit(last_line(e))


def check_command_line(argv: list[str], config, check_flags, num_processes: int | None) -> None:
    """Everything that needs no device: positional arguments, flags, the config.

    Args:
      argv: What absl left after parsing (the program name first).
      config: The `--config` value (None when missing).
      check_flags: Raises UsageError for flags that cannot work together.
      num_processes: `--num_processes`, if given.
    """
    if len(argv) > 1:
        usage_exit(f"unexpected positional arguments. Received: {argv[1:]}")
    if config is None:
        usage_exit("--config is required. Received: --config=None")
    try:
        check_flags()
        validate(config, num_processes=num_processes)
    except (UsageError, ConfigError) as e:
        usage_exit(str(e))
    except OSError as e:  # config_flags defers a config file it could not load.
        usage_exit(f"--config: {last_line(e)}")
    try:
        console.bar_mode()  # PODFIT_PROGRESS, if set, is bar or lines.
    except ValueError as e:
        usage_exit(str(e))


def check_on_devices(config, timeout_s: float) -> None:
    """After joining: the config against the devices, and the same on every process."""
    import jax  # noqa: PLC0415  (after the JAX configuration)

    from launcher.config_check import check_same_config  # noqa: PLC0415  (it raises UsageError)

    try:
        validate(config, num_devices=jax.device_count(), num_processes=jax.process_count())
        check_same_config(
            config.to_dict(),
            timeout_s,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
    except (ConfigError, UsageError) as e:
        usage_exit(str(e))
