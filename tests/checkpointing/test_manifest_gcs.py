"""Manifests on gs:// (a GCS emulator): written whole, never renamed into place."""

import json

from etils import epath

from checkpointing import manifest
from tests.gcs_emulator import BUCKET, gcs  # noqa: F401  (the fixture)


def test_manifest_on_gs_is_written_without_a_rename_and_verifies(gcs, monkeypatch):  # noqa: F811
    step_dir = epath.Path(f"gs://{BUCKET}/ck/8")
    (step_dir / "a.bin").write_bytes(b"x" * 100)

    def no_rename(self, target):
        raise AssertionError(f"rename on an object store: {self} -> {target}")

    monkeypatch.setattr(type(step_dir), "rename", no_rename)
    path = manifest.write(step_dir)
    document = json.loads(path.read_text())
    assert document["step"] == 8 and document["files"]["a.bin"]["size"] == 100
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # No temporary left.
    verdict = manifest.verify(step_dir)
    assert (verdict.status, verdict.files) == ("ok", 1), verdict
