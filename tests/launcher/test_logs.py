"""Which log records reach the console, and how they look there."""

import io
import logging
import sys

import pytest

from launcher import logs
from trainer import console


def _record(name, level, message, pathname="/repo/launcher/main.py", exc_info=None):
    return logging.LogRecord(name, level, pathname, 1, message, (), exc_info)


ORBAX = "/site-packages/orbax/checkpoint/_src/ocdbt_utils.py"


@pytest.mark.parametrize(
    "record,shown",
    [
        (_record(console.LOGGER, logging.INFO, "step 2/16"), True),
        (_record("absl", logging.INFO, "joining localhost:1234"), False),
        (_record("jax._src.distributed", logging.INFO, "Connecting to JAX"), False),
        (_record("absl", logging.WARNING, "not every process reached it"), True),
        (_record("absl", logging.WARNING, "Skipping merge of OCDBT checkpoints: ...", ORBAX), False),
        (_record("absl", logging.ERROR, "Skipping merge of OCDBT checkpoints failed", ORBAX), True),
        (_record("absl", logging.ERROR, "training failed on process 1"), True),
    ],
)  # fmt: skip
def test_console_shows_console_lines_and_warnings_that_matter(record, shown):
    assert logs._ConsoleFilter(detailed=False).filter(record) is shown
    assert logs._ConsoleFilter(detailed=True).filter(record)  # --verbosity=1: everything.


def test_console_lines_carry_only_the_tag_and_every_traceback_line_is_tagged():
    formatter = logs._Console("[p1]")
    assert formatter.format(_record(console.LOGGER, logging.INFO, "podfit: 16 steps")) == (
        "[p1] podfit: 16 steps"
    )
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        failed = _record("absl", logging.ERROR, "training failed", exc_info=sys.exc_info())
    lines = formatter.format(failed).splitlines()
    assert len(lines) > 3 and all(line.startswith("[p1] ") for line in lines)
    assert lines[0].startswith("[p1] E") and "training failed" in lines[0]
    assert lines[-1] == "[p1] RuntimeError: boom"


def test_a_shown_line_clears_the_bar_first(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(console, "stream", lambda: out)
    console.show_bar("[####] step 1/2")
    logs._ConsoleFilter(detailed=False).filter(_record("absl", logging.INFO, "file only"))
    assert out.getvalue() == f"{console.CLEAR}[####] step 1/2\r"  # Not shown: bar kept.
    logs._ConsoleFilter(detailed=False).filter(_record(console.LOGGER, logging.INFO, "shown"))
    assert out.getvalue().endswith(f"\r{console.CLEAR}")
    console.clear_bar()  # Nothing left to clear.
    assert out.getvalue().count(console.CLEAR) == 2


def test_file_keeps_routine_warnings_but_not_library_info():
    keep = logs._FileFilter()
    assert keep.filter(_record("absl", logging.WARNING, "Skipping merge of OCDBT", ORBAX))
    assert keep.filter(_record("absl", logging.INFO, "joining localhost:1234"))
    assert not keep.filter(_record("absl", logging.INFO, "Saving checkpoint at step 6", ORBAX))
    gcsfs = "/site-packages/gcsfs/core.py"
    assert not keep.filter(_record("gcsfs", logging.INFO, "AdaptiveReadaheadCache", gcsfs))
