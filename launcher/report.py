"""Goodput and badput of a workdir across all its launches, from its event log.

  python -m launcher.report WORKDIR [--png=PATH]

Reads process 0's events of every launch (`<workdir>/events/<launch>/
process_0.jsonl`, see `launcher/events.py`; the other processes' files are
for diagnosis, so the cost does not grow with the hosts), prints goodput and
badput by category, and writes `<workdir>/report.png`: a timeline of every
launch by phase, and the loss curve across launches (`metrics.jsonl`).

Goodput is the wall time of the training steps that count toward the final
model, over the wall time from the first launch's start to the last one's
end; `launcher/goodput.py` says what each category of badput holds.

Bad input (a missing workdir, no events): one line, exit 2.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterable

from etils import epath

from launcher.goodput import BETWEEN, CATEGORIES, GOODPUT, account, kept_steps, scan


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


def read_jsonl(path: epath.Path) -> list[dict]:
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
            records = read_jsonl(path)
            if records:
                launches.append((launch.name, sorted(records, key=lambda r: r["time"])))
    if not launches:
        raise ReportError(
            f"no events of process 0 in {folder} (events/<launch>/process_0.jsonl). "
            f"Received: WORKDIR={workdir}"
        )
    return launches


# -- the report -------------------------------------------------------------


def summarize(workdir: epath.PathLike) -> Report:
    """Goodput and badput of `workdir` (local or gs://) across all its launches.

    Raises:
        ReportError: The workdir or its events are missing (the message is one line).
    """
    scanned = [scan(name, events) for name, events in read_launches(workdir)]
    kept = kept_steps(scanned)
    seconds = {GOODPUT: 0.0, **{name: 0.0 for name, _ in CATEGORIES}}
    launches = []
    for i, (launch, keep) in enumerate(zip(scanned, kept, strict=True)):
        own, segments = account(launch, keep)
        for key, value in own.items():
            seconds[key] += value
        if i + 1 < len(scanned):
            gap = max(0.0, scanned[i + 1]["start"] - launch["end"])
            seconds[BETWEEN] += gap
            if gap:
                segments.append((BETWEEN, launch["end"], launch["end"] + gap))
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
    sys.exit(main(sys.argv[1:]))
