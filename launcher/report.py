"""Goodput and badput of a workdir across all its launches, from its event log.

  python -m launcher.report WORKDIR [--png=PATH]

Reads process 0's events of every launch (`<workdir>/events/<launch>/
process_0.jsonl`, see `launcher/events.py`; the other processes' files are
for diagnosis, so the cost does not grow with the hosts), prints goodput and
badput by category, and writes `<workdir>/report.png`: a timeline of every
launch by phase, and the loss curve across launches (`metrics.jsonl`).

Goodput is the wall time of the training steps that count toward the final
model, over the wall time from the first launch's start to the last one's
end. Every second of that wall time is in exactly one category:

- goodput: step time of the steps that count (the last launch's steps, and
  each earlier launch's steps up to the step the next launches resumed from);
- startup and joining (TPU_INITIALIZATION): from the launcher's start to
  `jax.distributed.initialize` returning;
- training preparation (TRAINING_PREP): config, mesh, data, model, up to `fit`;
  less the restore;
- checkpoint restore (UNPRODUCTIVE_CHECKPOINT_RESTORE_TIME);
- compilation (PROGRAM_STARTUP): from `fit` to the end of the launch's first
  step (tracing, compilation and that one step);
- data loading (DATA_LOADING_SYNC): the counted steps' wait for their
  batches (the training thread in the pipeline's `next`, `data_wait_s` of the
  step events; see `trainer.data.DataWait`), taken out of their step time;
- checkpoint save, blocking (UNPRODUCTIVE_CHECKPOINT_SAVE_TIME): the
  training thread waiting for a save (snapshot, hand-off, the previous write,
  the final write at the end of `fit`); background writes are not badput;
- evaluation (CUSTOM_BADPUT_EVENTS): validation inside `fit`;
- wasted progress (WASTED_PROGRESS_FROM_DISRUPTION): step time of steps a later
  launch computed again (after the last checkpoint before a kill or failure);
- between launches (INFRASTRUCTURE_RECOVERY_FROM_DISRUPTION): from a launch's
  last event to the next one's start (its dying, the relaunch, Python start-up);
- other (OTHER): after a launch's last step to its end (the final digest,
  files, a preemption's or failure's exit), less its saves.

Wasted steps keep their data wait (all of their time is wasted progress).
The timeline draws data loading inside the steps' bars (it is spread over
them). Steps are recorded every `trainer.log_every` steps (and at the end of
each `fit`): a launch killed between two records counts its steps up to the
last record, and the time after it as "between launches".

Bad input (a missing workdir, no events): one line, exit 2.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Iterable

from etils import epath

# (name, ml-goodput-measurement's BadputType), in the order printed and drawn.
CATEGORIES = (
    ("startup and joining", "TPU_INITIALIZATION"),
    ("training preparation", "TRAINING_PREP"),
    ("checkpoint restore", "UNPRODUCTIVE_CHECKPOINT_RESTORE_TIME"),
    ("compilation", "PROGRAM_STARTUP"),
    ("data loading", "DATA_LOADING_SYNC"),
    ("checkpoint save, blocking", "UNPRODUCTIVE_CHECKPOINT_SAVE_TIME"),
    ("evaluation", "CUSTOM_BADPUT_EVENTS"),
    ("wasted progress", "WASTED_PROGRESS_FROM_DISRUPTION"),
    ("between launches", "INFRASTRUCTURE_RECOVERY_FROM_DISRUPTION"),
    ("other", "OTHER"),
)
GOODPUT = "goodput"
_INIT, _PREP, _RESTORE, _COMPILE, _DATA, _SAVE, _EVAL, _WASTED, _BETWEEN, _OTHER = (
    name for name, _ in CATEGORIES
)


class ReportError(Exception):
    """Bad input: the message is the one line the command prints."""


@dataclasses.dataclass
class Launch:
    """One launch of the workdir, as process 0 recorded it.

    Attributes:
        name: The launch id (its events folder).
        start, end: Wall times (seconds since the epoch); `end` is the `end`
            event, else the last event (a process killed outright).
        code: The exit code from the `end` event; None without one.
        first_step: The step it started from (restored, or 0).
        last_step: The last step it recorded (None: no step ran).
        kept_step: Its steps up to this one count toward the final model.
        restored: The restored step (None: started from scratch).
        committed: The last step it committed (None: none).
        seconds: Wall time by category (and "goodput").
        segments: (category, t0, t1) intervals for the timeline.
    """

    name: str
    start: float
    end: float
    code: int | None
    first_step: int
    last_step: int | None
    kept_step: int
    restored: int | None
    committed: int | None
    seconds: dict[str, float]
    segments: list[tuple[str, float, float]]

    @property
    def counted_steps(self) -> int:
        return max(0, self.kept_step - self.first_step)

    @property
    def wasted_steps(self) -> int:
        return 0 if self.last_step is None else max(0, self.last_step - self.kept_step)

    @property
    def outcome(self) -> str:
        if self.code is None:
            return "no end recorded (killed or still running)"
        return {0: "finished", 75: "preempted (exit 75)"}.get(
            self.code, f"failed (exit {self.code})"
        )


@dataclasses.dataclass
class Report:
    """Goodput and badput of a workdir (see the module docstring for the categories).

    Attributes:
        workdir: As given.
        launches: In launch order.
        total_s: Wall time from the first start to the last end.
        seconds: Wall time by category, "goodput" included; sums to `total_s`.
    """

    workdir: str
    launches: list[Launch]
    total_s: float
    seconds: dict[str, float]

    @property
    def goodput_s(self) -> float:
        return self.seconds[GOODPUT]

    @property
    def goodput(self) -> float:
        """Goodput as a fraction of the wall time (0..1)."""
        return self.goodput_s / self.total_s if self.total_s > 0 else 0.0

    @property
    def badput(self) -> dict[str, float]:
        """Seconds by badput category (every category, in `CATEGORIES` order)."""
        return {name: self.seconds[name] for name, _ in CATEGORIES}

    @property
    def counted_steps(self) -> int:
        return sum(launch.counted_steps for launch in self.launches)

    @property
    def wasted_steps(self) -> int:
        return sum(launch.wasted_steps for launch in self.launches)

    def summary_line(self) -> str:
        """One line for a console: goodput and the largest badput."""
        worst = max(self.badput.items(), key=lambda kv: kv[1])
        return (
            f"goodput {100 * self.goodput:.1f}% of {self.total_s:.1f}s over "
            f"{len(self.launches)} launch(es); largest badput: {worst[0]} {worst[1]:.1f}s"
        )

    def lines(self) -> list[str]:
        """The printed report."""
        out = [
            f"goodput report of {self.workdir}: {len(self.launches)} launch(es), "
            f"{self.total_s:.1f}s from the first start to the end",
        ]
        for i, launch in enumerate(self.launches, 1):
            steps = (
                "no step"
                if launch.last_step is None
                else (f"steps {launch.first_step}->{launch.last_step}")
            )
            restored = "" if launch.restored is None else f", restored {launch.restored}"
            committed = "" if launch.committed is None else f", committed up to {launch.committed}"
            wasted = f", {launch.wasted_steps} step(s) wasted" if launch.wasted_steps else ""
            out.append(
                f"  launch {i} ({launch.name}): {launch.end - launch.start:.1f}s, {steps}"
                f"{restored}{committed}; {launch.outcome}{wasted}"
            )
        out.append(
            f"goodput: {100 * self.goodput:.1f}% ({self.goodput_s:.1f}s; "
            f"{self.counted_steps} steps count toward the final model, "
            f"{self.wasted_steps} computed again after a disruption)"
        )
        out.append("badput:")
        for name, kind in CATEGORIES:
            seconds = self.seconds[name]
            share = 100 * seconds / self.total_s if self.total_s > 0 else 0.0
            out.append(f"  {name:<26} {seconds:8.1f}s {share:5.1f}%  ({kind})")
        return out


# -- reading ----------------------------------------------------------------


def _read_jsonl(path: epath.Path) -> list[dict]:
    """The JSON lines of `path`; a torn last line (a kill mid-write) is dropped."""
    records = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def read_launches(workdir: epath.PathLike) -> list[tuple[str, list[dict]]]:
    """(launch id, process 0's events sorted by time) of every launch, in launch order.

    Raises:
        ReportError: The workdir or its events are missing.
    """
    root = epath.Path(workdir)
    if not root.exists():
        raise ReportError(f"the workdir does not exist. Received: WORKDIR={workdir}")
    folder = root / "events"
    if not folder.exists():
        raise ReportError(
            f"the workdir has no events folder (runs record one in <workdir>/events). "
            f"Received: WORKDIR={workdir}"
        )
    launches = []
    for launch in sorted(folder.iterdir(), key=lambda p: p.name):
        path = launch / "process_0.jsonl"
        if path.exists():
            records = _read_jsonl(path)
            if records:
                launches.append((launch.name, sorted(records, key=lambda r: r["time"])))
    if not launches:
        raise ReportError(
            f"no events of process 0 in {folder} (events/<launch>/process_0.jsonl). "
            f"Received: WORKDIR={workdir}"
        )
    return launches


# -- arithmetic -------------------------------------------------------------


def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


class _Steps:
    """Wall time and data wait at a step: linear between the recorded samples.

    A sample is (step, time, data wait so far); both rise with the steps
    (thread-pool order aside). Samples without a wait (event files of older
    runs) count none.
    """

    def __init__(self, samples: list[tuple[int, float, float]]):
        by_step: dict[int, tuple[float, float]] = {}
        for step, t, wait in samples:
            if step not in by_step or t < by_step[step][0]:
                by_step[step] = (t, wait)
        self.steps = sorted(by_step)
        self.times = self._rising([by_step[step][0] for step in self.steps])
        self.waits = self._rising([by_step[step][1] for step in self.steps])

    @staticmethod
    def _rising(values: list[float]) -> list[float]:
        out, latest = [], float("-inf")
        for value in values:
            latest = max(latest, value)
            out.append(latest)
        return out

    @staticmethod
    def _at(steps: list[int], values: list[float], step: float) -> float:
        if step <= steps[0]:
            return values[0]
        for i in range(1, len(steps)):
            if step <= steps[i]:
                s0, s1, v0, v1 = steps[i - 1], steps[i], values[i - 1], values[i]
                return v0 + (v1 - v0) * (step - s0) / (s1 - s0)
        return values[-1]

    def time_at(self, step: float) -> float:
        return self._at(self.steps, self.times, step)

    def wait_at(self, step: float) -> float:
        return self._at(self.steps, self.waits, step)


def _kept_steps(launches: list[dict]) -> list[int]:
    """Per launch, the step up to which its steps count toward the final model.

    The last launch's steps all count; an earlier launch's count up to the
    lowest step a later launch started from (what they did not compute again),
    and never below its own start.
    """
    kept = []
    for i, launch in enumerate(launches):
        last = launch["last_step"]
        if last is None:
            kept.append(launch["first_step"])
            continue
        later = [other["first_step"] for other in launches[i + 1 :] if other["fit"]]
        bound = min([last, *later])
        kept.append(max(launch["first_step"], bound))
    return kept


def _scan(name: str, events: list[dict]) -> dict:
    """The marks of one launch's events that the arithmetic needs."""

    def first(kind: str) -> dict | None:
        return next((e for e in events if e["kind"] == kind), None)

    start = first("start")
    ended = first("end")
    begun = first("fit_begun")
    compiled = first("compiled")
    restore = first("restore")
    samples = [
        (e["step"], e["time"], e.get("data_wait_s", 0.0))
        for e in events
        if e["kind"] in ("compiled", "step")
    ]
    committed = [e["step"] for e in events if e["kind"] == "save_committed"]
    intervals = []  # (category, t0, t1)
    if restore is not None:
        intervals.append((_RESTORE, restore["time"] - restore["seconds"], restore["time"]))
    for e in events:
        if e["kind"] in ("save_blocked", "save_waited"):
            intervals.append((_SAVE, e["time"] - e["ms"] / 1000.0, e["time"]))
    pending = None
    for e in events:
        if e["kind"] == "eval_begun":
            pending = e["time"]
        elif e["kind"] == "eval_done" and pending is not None:
            intervals.append((_EVAL, pending, e["time"]))
            pending = None
    t_start = events[0]["time"] if start is None else start["time"]
    t_end = ended["time"] if ended is not None else events[-1]["time"]
    if pending is not None:  # Ended (killed) during validation.
        intervals.append((_EVAL, pending, t_end))
    first_step = (
        begun["step"] if begun is not None else (restore["step"] if restore is not None else 0)
    )
    return {
        "name": name,
        "start": t_start,
        "end": t_end,
        "code": None if ended is None else ended.get("code"),
        "joined": next((e["time"] for e in events if e["kind"] == "joined"), None),
        "fit": None if begun is None else begun["time"],
        "compiled": None if compiled is None else compiled["time"],
        "samples": samples,
        "first_step": first_step,
        "last_step": max(sample[0] for sample in samples) if samples else None,
        "restored": None if restore is None else restore["step"],
        "committed": max(committed) if committed else None,
        "intervals": intervals,
    }


def _account(launch: dict, kept: int) -> tuple[dict[str, float], list[tuple[str, float, float]]]:
    """(seconds by category, timeline segments) of one launch; they sum to its wall time."""
    seconds = {GOODPUT: 0.0, **{name: 0.0 for name, _ in CATEGORIES}}
    segments: list[tuple[str, float, float]] = []
    end = launch["end"]
    marks = [launch["start"]]
    for key in ("joined", "fit", "compiled"):
        marks.append(min(end, launch[key]) if launch[key] is not None else end)
    steps = _Steps(launch["samples"]) if launch["samples"] else None
    last_sample = steps.times[-1] if steps is not None else end
    marks.append(min(end, max(marks[-1], last_sample)))
    marks.append(end)
    marks = [max(marks[0], m) for m in marks]
    for i in range(1, len(marks)):
        marks[i] = max(marks[i], marks[i - 1])
    intervals = [(c, max(t0, marks[0]), min(t1, end)) for c, t0, t1 in launch["intervals"]]
    intervals = [(c, t0, t1) for c, t0, t1 in intervals if t1 > t0]

    def charge(base: str, p0: float, p1: float) -> None:
        """Phase [p0, p1]: its intervals to their categories, the rest to `base`."""
        covered = 0.0
        for category, t0, t1 in intervals:
            part = _overlap(p0, p1, t0, t1)
            seconds[category] += part
            covered += part
        seconds[base] += max(0.0, p1 - p0 - covered)
        if p1 > p0:
            segments.append((base, p0, p1))

    def step_time(a: float, b: float) -> float:
        """Step time of steps (a, b]: their wall time less the intervals in it."""
        t0, t1 = steps.time_at(a), steps.time_at(b)
        return max(0.0, t1 - t0 - sum(_overlap(t0, t1, s, e) for _, s, e in intervals))

    start, joined, fit, compiled, last, _ = marks
    charge(_INIT, start, joined)
    charge(_PREP, joined, fit)
    charge(_COMPILE, fit, compiled)
    if steps is not None and last > compiled:
        # The steps' phase: its intervals to their categories, the step time
        # of the steps that count to goodput, the rest's to wasted progress.
        for category, t0, t1 in intervals:
            seconds[category] += _overlap(compiled, last, t0, t1)
        first, last_step = steps.steps[0], steps.steps[-1]  # First: the compiled step.
        split = min(max(kept, first), last_step)
        counted = step_time(first, split)
        waited = min(counted, max(0.0, steps.wait_at(split) - steps.wait_at(first)))
        seconds[GOODPUT] += counted - waited
        seconds[_DATA] += waited
        seconds[_WASTED] += step_time(split, last_step)
        t_split = steps.time_at(split)
        if t_split > compiled:
            segments.append((GOODPUT, compiled, t_split))
        if last > t_split:
            segments.append((_WASTED, t_split, last))
    charge(_OTHER, last, end)
    segments += intervals
    return seconds, segments


def summarize(workdir: epath.PathLike) -> Report:
    """Goodput and badput of `workdir` (local or gs://) across all its launches.

    Raises:
        ReportError: The workdir or its events are missing (the message is one line).
    """
    scanned = [_scan(name, events) for name, events in read_launches(workdir)]
    kept = _kept_steps(scanned)
    seconds = {GOODPUT: 0.0, **{name: 0.0 for name, _ in CATEGORIES}}
    launches = []
    for i, (launch, keep) in enumerate(zip(scanned, kept, strict=True)):
        own, segments = _account(launch, keep)
        for key, value in own.items():
            seconds[key] += value
        if i + 1 < len(scanned):
            gap = max(0.0, scanned[i + 1]["start"] - launch["end"])
            seconds[_BETWEEN] += gap
            if gap:
                segments.append((_BETWEEN, launch["end"], launch["end"] + gap))
        launches.append(
            Launch(
                name=launch["name"],
                start=launch["start"],
                end=launch["end"],
                code=launch["code"],
                first_step=launch["first_step"],
                last_step=launch["last_step"],
                kept_step=keep,
                restored=launch["restored"],
                committed=launch["committed"],
                seconds=own,
                segments=segments,
            )
        )
    total = max(launch.end for launch in launches) - launches[0].start
    return Report(str(workdir), launches, total, seconds)


def main(argv: Iterable[str]) -> int:
    argv = list(argv)
    usage = "usage: python -m launcher.report WORKDIR [--png=PATH]"
    png = None
    positional = []
    for arg in argv:
        if arg.startswith("--png="):
            png = arg.split("=", 1)[1]
        elif arg.startswith("-"):
            print(f"launcher.report: unknown flag. Received: {arg} ({usage})", file=sys.stderr)
            return 2
        else:
            positional.append(arg)
    if len(positional) != 1:
        print(
            f"launcher.report: expects one WORKDIR. Received: {positional} ({usage})",
            file=sys.stderr,
        )
        return 2
    from launcher import report_png  # noqa: PLC0415  (imports this module)
    from launcher import workdir as workdirs  # noqa: PLC0415

    root = workdirs.resolve(positional[0])
    try:
        report = summarize(root)
    except ReportError as e:
        print(f"launcher.report: {e}", file=sys.stderr)
        return 2
    for line in report.lines():
        print(line)
    target = report_png.write_png(report, png or root / "report.png", root)
    print(f"timeline and loss curve: {target}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "Agg")
    sys.exit(main(sys.argv[1:]))
