"""The start line and the summary process 0 shows."""

import logging
import time

import pytest
from etils import epath

from launcher import summary
from trainer import console


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == console.LOGGER]


@pytest.mark.parametrize(
    "start,final,figure,done",
    [
        (0, 240, None, "done: trained 240/240 steps in "),
        (80, 240, 0.8734, "done: trained steps 81-240 of 240 in "),
        (240, 240, None, "done: nothing left to train at step 240/240 in "),
    ],
)
def test_summary_says_what_was_trained_where_the_model_is_and_how_to_load_it(
    caplog, monkeypatch, tmp_path, start, final, figure, done
):
    caplog.set_level(logging.INFO, logger=console.LOGGER)
    monkeypatch.setattr(summary, "goodput", lambda workdir: figure)
    summary.end_lines(
        start_step=start,
        final_step=final,
        total_steps=240,
        started=time.monotonic() - 75,
        workdir=epath.Path(tmp_path),
        committed=[160, 240],
    )
    first, model, load = _lines(caplog)
    assert first.startswith(done)
    assert first.split(" in ")[-1].startswith("1m1")  # 75 s and a little more.
    assert first.endswith(", goodput 87.3%") is (figure is not None)
    assert model == f"model: {tmp_path}/checkpoints/240 (the last committed step)"
    assert load.startswith(f"load it: checkpointing.load_model('{tmp_path}/checkpoints') in Python")
    assert load.endswith(f" -m checkpointing export {tmp_path}/checkpoints model.keras")


def test_start_line_names_topology_config_and_workdir(caplog):
    caplog.set_level(logging.INFO, logger=console.LOGGER)
    config = summary.config_text("configs/lm.py:tiny", {"trainer.epochs": 3, "x": "y" * 200})
    assert config.startswith("configs/lm.py:tiny (trainer.epochs=3, x=yyy") and config.endswith(
        "...)"
    )
    summary.start_line(
        process_count=4,
        local_devices=8,
        device_count=32,
        platform="tpu",
        config="configs/lm.py",
        total_steps=240,
        workdir="gs://b/run",
        log_dir="/tmp/podfit/gs/b/run/logs",
    )
    assert _lines(caplog) == [
        "podfit: 240 steps of configs/lm.py on 32 tpu devices (4 processes x 8); "
        "workdir gs://b/run; logs /tmp/podfit/gs/b/run/logs/process_N.log"
    ]


def test_goodput_is_none_with_a_warning_when_the_report_fails(monkeypatch, tmp_path, caplog):
    from launcher import report

    def failing(workdir):
        raise KeyError("step")

    monkeypatch.setattr(report, "summarize", failing)
    assert summary.goodput(epath.Path(tmp_path)) is None
    assert "goodput unavailable: KeyError('step')" in caplog.text
    # No events at all is not a warning: nothing to report yet.
    monkeypatch.undo()
    caplog.clear()
    assert summary.goodput(epath.Path(tmp_path)) is None
    assert "goodput unavailable" not in caplog.text


def test_a_failed_checkpoint_listing_is_a_warning_and_the_summary_still_shows(
    caplog, monkeypatch, tmp_path
):
    from checkpointing import layout
    from configs import lm
    from trainer.train import TrainResult

    def failing(directory):
        raise OSError(5, "Input/output error (injected)")

    caplog.set_level(logging.INFO)
    monkeypatch.setattr(layout, "committed_steps", failing)
    monkeypatch.setattr(summary, "goodput", lambda workdir: None)
    config = lm.get_config("tiny")
    result = TrainResult(start_step=0, final_step=8, weights_sha256="0" * 64, history={})
    summary.show_end(config, epath.Path(tmp_path), result, time.monotonic(), lambda: None)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "could not list the committed checkpoints" in w and "injected" in w for w in warnings
    )
    assert _lines(caplog)[0].startswith("done: trained 8/8 steps in ")
