"""Command line: look into a checkpoint directory, export a step.

  python -m checkpointing list DIR
  python -m checkpointing inspect DIR [--step N]
  python -m checkpointing export DIR OUT.keras [--step N] [--import MODULE ...]
  python -m checkpointing verify DIR [--step N]

`export` rebuilds the model with `checkpointing.load_model` (any topology
may have written the step): it imports the modules the step's model config
records for its custom objects, and the `--import` ones first; it exits
with 1 if the step is damaged.

`verify` prints each step's status against its manifest (ok / damaged: the
file, expected vs found / unverified: no manifest) and exits with 1 if any
step is damaged, else 0.

Bad input (a missing directory, no committed step, an unknown step, an
output not ending in .keras, a step without model config, a module that
cannot be imported) prints one line naming it and exits with 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

# An entry point: the package is JAX-only, so default the Keras backend here,
# before anything imports keras.
os.environ.setdefault("KERAS_BACKEND", "jax")

USAGE_ERROR = 2
DAMAGED = 1


class UsageError(Exception):
    """Bad input: reported as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # One line instead of usage + error.
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m checkpointing", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    listing = commands.add_parser("list", help="the committed steps")
    listing.add_argument("directory")
    inspect = commands.add_parser("inspect", help="one step's record and arrays (JSON)")
    inspect.add_argument("directory")
    inspect.add_argument("--step", type=int, default=None, help="default: the latest")
    export = commands.add_parser("export", help="rebuild the model, save it as .keras")
    export.add_argument("directory")
    export.add_argument("out")
    export.add_argument("--step", type=int, default=None, help="default: the latest")
    export.add_argument(
        "--import",
        dest="imports",
        action="extend",
        nargs="+",
        default=[],
        metavar="MODULE",
        help="modules to import first, registering the model's custom objects",
    )
    verify = commands.add_parser("verify", help="check steps against their manifests")
    verify.add_argument("directory")
    verify.add_argument("--step", type=int, default=None, help="default: every step")
    return parser


def _steps(directory: str) -> list[int]:
    from etils import epath

    from checkpointing import layout

    if not epath.Path(directory).is_dir():
        raise UsageError(f"checkpoint directory does not exist. Received: DIR={directory}")
    steps = [m.step for m in layout.committed_steps(directory)]
    if not steps:
        raise UsageError(
            f"no committed checkpoint step in the directory. Received: DIR={directory}"
        )
    return steps


def _pick(directory: str, step: int | None) -> int:
    steps = _steps(directory)
    if step is None:
        return steps[-1]
    if step not in steps:
        raise UsageError(
            f"step {step} is not a committed step of {directory} (committed: {steps}). "
            f"Received: --step={step}"
        )
    return step


def _list(directory: str) -> None:
    from checkpointing.steps import list_steps

    _steps(directory)
    print(f"{'step':>8}  {'committed (UTC)':19}  {'size':>10}  topology / metrics")
    for info in list_steps(directory):
        when = info.time.strftime("%Y-%m-%d %H:%M:%S") if info.time else "-"
        metrics = " ".join(f"{k}={v:.4g}" for k, v in sorted(info.metrics.items()))
        print(f"{info.step:>8}  {when:19}  {info.size_bytes:>10}  {info.topology}  {metrics}")


def _inspect(directory: str, step: int | None) -> None:
    from orbax.checkpoint import v1 as ocp

    from checkpointing import layout
    from checkpointing.metadata import flatten_with_paths

    step = _pick(directory, step)
    path = layout.step_path(directory, step)
    record = layout.read_record(path)
    with layout.orbax_context():
        tree = ocp.metadata(path, checkpointable_name=layout.PYTREE).metadata
    arrays = {
        name: f"{leaf.dtype}[{','.join(str(d) for d in leaf.shape)}]"
        for name, leaf in flatten_with_paths(tree).items()
    }
    report = {
        "step": step,
        "path": str(path),
        "checkpointables": sorted(layout.saved_checkpointables(path)),
        "record": None if record is None else record.to_json(),
        "arrays": arrays,
    }
    print(json.dumps(report, indent=2, sort_keys=True))


def _export(directory: str, out: str, step: int | None, imports: list[str]) -> int:
    if not out.endswith(".keras"):
        raise UsageError(f"the output must end in .keras. Received: OUT={out}")
    step = _pick(directory, step)
    from checkpointing.loading import LoadArgumentError, load_model
    from checkpointing.manifest import CheckpointCorruptError

    try:
        model = load_model(directory, step, import_modules=imports)
    except LoadArgumentError as e:
        message = str(e).replace("Received: step=", "Received: --step=")
        raise UsageError(
            message.replace("Received: import_modules=", "Received: --import=")
        ) from None
    except CheckpointCorruptError as e:
        print(f"checkpointing: {e}", file=sys.stderr)
        return DAMAGED
    model.save(out)
    print(f"exported step {step} of {directory} to {out}")
    return 0


def _verify(directory: str, step: int | None) -> int:
    from checkpointing.steps import verify_steps

    if step is not None:
        _pick(directory, step)
    else:
        _steps(directory)
    damaged = 0
    for verdict in verify_steps(directory, step):
        print(f"{verdict.step:>8}  {verdict.describe()}")
        damaged += verdict.status == "damaged"
    return DAMAGED if damaged else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        try:
            args = _parser().parse_args(argv)
        except UsageError as e:
            raise UsageError(f"{e}. Received: {' '.join(argv) or '(no arguments)'}") from None
        from checkpointing import layout

        args.directory = layout.root(args.directory)  # Orbax needs absolute local paths.
        if args.command == "list":
            _list(args.directory)
        elif args.command == "inspect":
            _inspect(args.directory, args.step)
        elif args.command == "verify":
            return _verify(args.directory, args.step)
        else:
            return _export(args.directory, args.out, args.step, args.imports)
    except UsageError as e:
        print(f"checkpointing: {e}", file=sys.stderr)
        return USAGE_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
