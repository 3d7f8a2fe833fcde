"""A local GCS emulator (gcp-storage-emulator) on loopback, for gs:// tests.

TensorStore (Orbax's array writes) reaches it through TENSORSTORE_GCS_HTTP_URL
and GOOGLE_AUTH_TOKEN_FOR_TESTING; etils.epath (gcsfs) through
STORAGE_EMULATOR_HOST. `variables(url)` are what a process needs to use it.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import fsspec.config
import portpicker
import pytest

BUCKET = "bucket"


def variables(url: str) -> dict[str, str]:
    """Environment that points TensorStore and gcsfs at the emulator at `url`."""
    return {
        "STORAGE_EMULATOR_HOST": url,
        "TENSORSTORE_GCS_HTTP_URL": url,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
        # gcsfs' bucket-type probe calls the Storage Control API, which the
        # emulator lacks (a warning per call, then the plain GCS client).
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    }


@contextlib.contextmanager
def running(log: Path, timeout: float = 30) -> Iterator[str]:
    """Starts the emulator with bucket BUCKET (in memory); yields its URL; always stops it.

    Its output goes to `log`.
    """
    port = portpicker.pick_unused_port()
    url = f"http://127.0.0.1:{port}"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gcp_storage_emulator",
                "start",
                "--host=127.0.0.1",
                f"--port={port}",
                f"--default-bucket={BUCKET}",
                "--in-memory",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(url + "/", timeout=1) as r:  # Health check.
                    if r.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"GCS emulator did not start: {log.read_text()[-2000:]}"
                    ) from None
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def gcs(tmp_path_factory) -> Iterator[str]:
    """The emulator's URL; this process' environment points at it until the module ends.

    Subprocesses started with tests.helpers.env() inherit the variables.
    """
    log = tmp_path_factory.mktemp("gcs_emulator") / "emulator.log"
    with running(log) as url, pytest.MonkeyPatch.context() as patch:
        for name, value in variables(url).items():
            patch.setenv(name, value)
        # Listings the launcher's processes write must be seen here (see
        # launcher.workdir.no_listing_cache).
        for protocol in ("gs", "gcs"):
            patch.setitem(fsspec.config.conf, protocol, {"use_listings_cache": False})
        yield url
