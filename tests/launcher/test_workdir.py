"""The workdir probe and the log folder, on a local disk and on gs:// (emulator)."""

import os
import tempfile

import pytest
from etils import epath

from launcher import workdir
from tests.gcs_emulator import BUCKET, gcs  # noqa: F401  (the fixture)
from tests.helpers import launcher


def test_local_workdir_is_created_absolute_and_left_clean(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = workdir.writable("runs/a")
    assert os.fspath(path) == str(tmp_path / "runs" / "a")
    assert path.is_dir() and list(path.iterdir()) == []


def test_gs_workdir_keeps_its_url_and_the_probe_is_deleted(gcs):  # noqa: F811
    path = workdir.writable(f"gs://{BUCKET}/probe/run")
    assert os.fspath(path) == f"gs://{BUCKET}/probe/run"
    # No object is left under the prefix (gcsfs: a prefix with objects exists).
    assert not epath.Path(f"gs://{BUCKET}/probe").exists()


def test_gs_workdir_in_a_missing_bucket_is_refused_in_one_line(gcs):  # noqa: F811
    with pytest.raises(workdir.WorkdirError) as e:
        workdir.writable("gs://no-such-bucket/run")
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith("--workdir cannot be written (FileNotFoundError")
    assert message.endswith("Received: --workdir=gs://no-such-bucket/run")
    assert not epath.Path("gs://no-such-bucket").exists()


def test_launcher_exits_2_in_one_line_for_a_missing_bucket(gcs):  # noqa: F811
    r = launcher("--config=configs/lm.py:tiny", "--workdir=gs://no-such-bucket/run")
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("launcher:")]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("launcher: --workdir cannot be written (FileNotFoundError")
    assert lines[0].endswith(" Received: --workdir=gs://no-such-bucket/run")
    assert "Traceback" not in r.stderr


def test_missing_workdir_is_refused():
    with pytest.raises(workdir.WorkdirError, match="Received: --workdir=None"):
        workdir.writable(None)


def test_log_dir_defaults_local_to_the_workdir_and_remote_to_the_temp_dir(tmp_path):
    assert workdir.log_dir(str(tmp_path / "w"), None) == str(tmp_path / "w" / "logs")
    assert workdir.log_dir("gs://b/run1/", None) == os.path.join(
        tempfile.gettempdir(), "podfit", "gs", "b", "run1", "logs"
    )
    assert workdir.log_dir("gs://b/run1", str(tmp_path / "l")) == str(tmp_path / "l")


def test_remote_listings_are_not_cached_unless_configured(monkeypatch):
    import fsspec.config

    monkeypatch.setattr(fsspec.config, "conf", {"s3": {"use_listings_cache": True}})
    workdir.no_listing_cache()
    assert fsspec.config.conf["gs"] == {"use_listings_cache": False}
    assert fsspec.config.conf["s3"] == {"use_listings_cache": True}  # The user's choice.
