"""JSON lines on a local disk (appended) and on gs:// (the object rewritten)."""

import json

from etils import epath

from tests.gcs_emulator import BUCKET, gcs  # noqa: F401  (the fixture)
from trainer.records import JsonLines


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in epath.Path(path).read_text().splitlines()]


def test_local_lines_are_appended_at_once_to_what_was_there(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n')
    sink = JsonLines(path)
    sink.write({"step": 2, "loss": 0.5})
    assert _lines(path) == [{"step": 1}, {"step": 2, "loss": 0.5}]


def test_gs_object_is_rewritten_on_flush_and_keeps_a_resumed_runs_lines(gcs):  # noqa: F811
    url = f"gs://{BUCKET}/records/metrics.jsonl"
    first = JsonLines(url, flush_s=3600)
    first.write({"step": 1})
    assert not epath.Path(url).exists()  # Not before a flush (or flush_s).
    first.write({"step": 2})
    first.flush()
    assert _lines(url) == [{"step": 1}, {"step": 2}]

    resumed = JsonLines(url, flush_s=0)  # Every write rewrites the object.
    resumed.write({"step": 3})
    assert _lines(url) == [{"step": 1}, {"step": 2}, {"step": 3}]
