"""What the launch scripts share: their own flags before `--`, the launcher's after it.

`simulate.py`, `launch_tpu_pod.py` and `launch_k8s.py` take their own absl
flags, then `--`, then the launcher flags they pass on untouched. Bad usage is
one line on stderr and exit 2, the documented code.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from absl import flags

EXIT_USAGE = 2


def usage_error(program: str, message: str) -> None:
    """Prints `program: message` on stderr and exits 2."""
    sys.stderr.write(f"{program}: {message}\n")
    sys.exit(EXIT_USAGE)


def parser(program: str, example: str) -> Callable[[list[str]], list[str]]:
    """An `app.run(flags_parser=...)` that parses our flags before `--`.

    The parser returns `[program path, *launcher flags]`. `example` shows the
    right form in the error for launcher flags given before `--`, e.g.
    `simulate.py --num_processes=2 --`.
    """

    def parse(argv: list[str]) -> list[str]:
        if "--" in argv[1:]:
            split = argv.index("--", 1)
            ours, passthrough = argv[:split], argv[split + 1 :]
        else:
            ours, passthrough = argv, []
        try:
            leftover = flags.FLAGS(ours)
        except flags.Error as e:
            usage_error(program, str(e).replace("\n", " "))
        if len(leftover) > 1:
            usage_error(
                program,
                f"launcher flags go after '--', e.g. {example} --config=configs/lm.py. "
                f"Received: {leftover[1:]}",
            )
        return [argv[0], *passthrough]

    return parse
