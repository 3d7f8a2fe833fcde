"""The workdir probe: created if needed, written and cleaned, exit 2 if it cannot be."""

import pytest

from launcher import workdir


def test_probe_creates_the_workdir_and_leaves_nothing(tmp_path):
    path = workdir.writable(str(tmp_path / "a" / "b"))
    assert path.is_dir() and list(path.iterdir()) == []
    assert str(path) == str(tmp_path / "a" / "b")


def test_unwritable_workdir_exits_2_with_one_line(tmp_path, capsys):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    with pytest.raises(SystemExit) as e:
        workdir.writable(f"{blocked}/sub")
    assert e.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("launcher: --workdir cannot be written (")
    assert line.endswith(f"Received: --workdir={blocked}/sub")


def test_missing_workdir_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        workdir.writable(None)
    assert e.value.code == 2
    assert capsys.readouterr().err == "launcher: --workdir is required. Received: --workdir=None\n"
