"""The goodput report's arithmetic on hand-made event files, and the event recorder."""

import json
import threading

import pytest

from launcher import events, report, report_png


def _write(workdir, launch, records, process=0):
    folder = workdir / "events" / launch
    folder.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(r) + "\n" for r in records)
    (folder / f"process_{process}.jsonl").write_text(lines)


def _e(kind, time, **fields):
    return {"kind": kind, "time": time, **fields}


# Launch 1, killed: 1 s per step, a commit at step 4, killed after step 6.
_KILLED = [
    _e("start", 100.0),
    _e("joined", 102.0),
    _e("fit_begun", 105.0, step=0),
    _e("compiled", 110.0, step=1),
    _e("step", 111.0, step=2),
    _e("step", 112.0, step=3),
    _e("step", 113.0, step=4),
    _e("save_begun", 113.0, step=4),
    _e("save_blocked", 113.5, step=4, ms=500.0),
    _e("save_committed", 114.0, step=4, write_s=1.0, bytes=10),
    _e("step", 114.5, step=5),
    _e("step", 115.5, step=6),
]
# Launch 2: restores step 4, runs to step 8, validates, saves, ends.
_RESUMED = [
    _e("start", 120.0),
    _e("joined", 121.0),
    _e("restore", 124.0, step=4, seconds=2.0),
    _e("fit_begun", 125.0, step=4),
    _e("compiled", 128.0, step=5),
    _e("step", 129.0, step=6),
    _e("step", 130.0, step=7),
    _e("step", 131.0, step=8),
    _e("eval_begun", 131.0, step=8),
    _e("eval_done", 132.0, step=8),
    _e("save_blocked", 132.25, step=8, ms=250.0),
    _e("save_waited", 133.0, step=8, ms=750.0),
    _e("save_committed", 133.0, step=8, write_s=1.0, bytes=10),
    _e("end", 134.0, code=0),
]


def test_categories_of_a_killed_and_resumed_run(tmp_path):
    _write(tmp_path, "20260101T000000.000Z", _KILLED)
    _write(tmp_path, "20260101T000020.000Z", _RESUMED)
    # Another process' file is read by nobody: a wrong one changes nothing.
    _write(tmp_path, "20260101T000000.000Z", [_e("start", 0.0)], process=1)
    r = report.summarize(tmp_path)
    expected = {
        "goodput": 3.0 + 3.0,  # Steps 1-4 of launch 1 (1 s each, less nothing), 5-8 of launch 2.
        "startup and joining": 2.0 + 1.0,
        "training preparation": 3.0 + (4.0 - 2.0),
        "checkpoint restore": 2.0,
        "compilation": 5.0 + 3.0,
        "data loading": 0.0,  # The events carry no data_wait_s (as an older run's).
        "checkpoint save, blocking": 0.5 + 0.25 + 0.75,
        "evaluation": 1.0,
        "wasted progress": 2.0,  # Steps 5 and 6 of launch 1, less nothing blocked then.
        "between launches": 120.0 - 115.5,
        "other": 1.0,  # Launch 2's tail: 3 s after step 8, less 1 s eval and 1 s saves.
    }
    assert r.seconds == pytest.approx(expected)
    assert r.total_s == pytest.approx(34.0)
    assert sum(r.seconds.values()) == pytest.approx(r.total_s)
    assert r.goodput == pytest.approx(6.0 / 34.0)
    first, second = r.launches
    assert (first.first_step, first.kept_step, first.last_step) == (0, 4, 6)
    assert (first.wasted_steps, first.counted_steps, first.code) == (2, 4, None)
    assert (second.restored, second.counted_steps, second.code) == (4, 4, 0)
    assert r.wasted_steps == 2 and r.counted_steps == 8
    text = "\n".join(r.lines())
    assert "2 step(s) wasted" in text and "WASTED_PROGRESS_FROM_DISRUPTION" in text


def test_data_wait_of_counted_steps_is_data_loading_and_wasted_steps_keep_theirs(tmp_path):
    # Launch 1 again, its step events carrying the wait so far (the compiled
    # step's 0.3 s is the first batch's, inside compilation).
    waits = {1: 0.3, 2: 0.5, 3: 0.9, 4: 1.0, 5: 1.2, 6: 1.5}
    killed = [
        {**e, "data_wait_s": waits[e["step"]]} if e["kind"] in ("compiled", "step") else e
        for e in _KILLED
    ]
    _write(tmp_path, "20260101T000000.000Z", killed)
    _write(tmp_path, "20260101T000020.000Z", _RESUMED)
    r = report.summarize(tmp_path)
    first, second = r.launches
    assert first.seconds["data loading"] == pytest.approx(1.0 - 0.3)  # Steps 2-4.
    assert first.seconds["goodput"] == pytest.approx(3.0 - 0.7)
    assert first.seconds["wasted progress"] == pytest.approx(2.0)  # Steps 5-6, waits kept.
    assert second.seconds["data loading"] == 0.0
    assert r.seconds["data loading"] == pytest.approx(0.7)
    assert sum(r.seconds.values()) == pytest.approx(r.total_s)
    assert any("DATA_LOADING_SYNC" in line for line in r.lines())


def test_a_later_restore_to_an_earlier_step_wastes_more(tmp_path):
    # A third launch restores step 2 (say, later steps were damaged): launch 1's
    # steps after 2 and all of launch 2's are computed again.
    third = [
        _e("start", 140.0),
        _e("joined", 141.0),
        _e("restore", 142.0, step=2, seconds=1.0),
        _e("fit_begun", 142.0, step=2),
        _e("compiled", 143.0, step=3),
        _e("step", 144.0, step=4),
        _e("end", 145.0, code=0),
    ]
    for i, records in enumerate((_KILLED, _RESUMED, third)):
        _write(tmp_path, f"launch{i}", records)
    r = report.summarize(tmp_path)
    assert [launch.kept_step for launch in r.launches] == [2, 4, 4]
    assert [launch.wasted_steps for launch in r.launches] == [4, 4, 0]
    assert r.counted_steps == 2 + 0 + 2
    assert sum(r.seconds.values()) == pytest.approx(r.total_s)
    # Launch 1: steps 1-2 count (step 1 is compilation), 3-6 are wasted.
    assert r.launches[0].seconds["goodput"] == pytest.approx(1.0)
    assert r.launches[0].seconds["wasted progress"] == pytest.approx(5.5 - 1.0 - 0.5)


def test_a_launch_that_died_in_preparation(tmp_path):
    _write(tmp_path, "a", [_e("start", 10.0), _e("joined", 11.0), _e("failed", 13.0, error="x")])
    r = report.summarize(tmp_path)
    (launch,) = r.launches
    assert launch.last_step is None and r.counted_steps == 0
    assert r.seconds["training preparation"] == pytest.approx(2.0)
    assert sum(r.seconds.values()) == pytest.approx(r.total_s) == pytest.approx(3.0)


def test_a_torn_last_line_is_dropped(tmp_path):
    _write(tmp_path, "a", _RESUMED)
    path = tmp_path / "events" / "a" / "process_0.jsonl"
    path.write_text(path.read_text() + '{"kind": "step", "ti')
    assert report.summarize(tmp_path).launches[0].end == 134.0


@pytest.mark.parametrize(
    "setup,expected",
    [
        (lambda p: p / "missing", "the workdir does not exist"),
        (lambda p: p, "no events folder"),
        (lambda p: (p / "events" / "a").mkdir(parents=True) or p, "no events of process 0"),
    ],
    ids=["missing", "no-events-folder", "empty"],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, setup, expected):
    workdir = setup(tmp_path)
    assert report.main([str(workdir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err and str(workdir) in err


def test_main_prints_and_writes_a_png(tmp_path, capsys):
    _write(tmp_path, "a", _KILLED)
    _write(tmp_path, "b", _RESUMED)
    (tmp_path / "metrics.jsonl").write_text(
        "".join(
            json.dumps({"step": s, "time": t, "loss": 5.0 - s / 10}) + "\n"
            for s, t in [(1, 1.0), (2, 2.0), (5, 0.5), (6, 1.5)]
        )
    )
    assert report.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "goodput: 17.6%" in out
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [[s for s, _ in run] for run in report_png._loss_runs(tmp_path)] == [[1, 2], [5, 6]]


def test_recorder_keeps_events_until_open_then_appends_each_line(tmp_path):
    recorder = events.Recorder(start_time=50.0)
    recorder("joined", {"time": 51.0, "process_index": 0})
    path = recorder.open(tmp_path, events.launch_name(50.0), 0)
    assert path == tmp_path / "events" / "19700101T000050.000Z" / "process_0.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["kind"] for line in lines] == ["start", "joined"]
    # Appended at once (what a kill -9 leaves), from several threads.
    threads = [
        threading.Thread(target=recorder, args=("step", {"time": 52.0 + i, "step": i}))
        for i in range(20)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted(line["step"] for line in lines if line["kind"] == "step") == list(range(20))


def test_launch_names_sort_by_start_time():
    names = [events.launch_name(t) for t in (1_700_000_000.5, 1_700_000_000.999, 1_700_000_010.0)]
    assert names == sorted(names) and names[0] == "20231114T221320.500Z"
