"""The goodput arithmetic of `launcher.report`: one launch's events to seconds by category.

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
"""

from __future__ import annotations

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
INIT, PREP, RESTORE, COMPILE, DATA, SAVE, EVAL, WASTED, BETWEEN, OTHER = (
    name for name, _ in CATEGORIES
)


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


def kept_steps(launches: list[dict]) -> list[int]:
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


def scan(name: str, events: list[dict]) -> dict:
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
        intervals.append((RESTORE, restore["time"] - restore["seconds"], restore["time"]))
    for e in events:
        if e["kind"] in ("save_blocked", "save_waited"):
            intervals.append((SAVE, e["time"] - e["ms"] / 1000.0, e["time"]))
    pending = None
    for e in events:
        if e["kind"] == "eval_begun":
            pending = e["time"]
        elif e["kind"] == "eval_done" and pending is not None:
            intervals.append((EVAL, pending, e["time"]))
            pending = None
    t_start = events[0]["time"] if start is None else start["time"]
    t_end = ended["time"] if ended is not None else events[-1]["time"]
    if pending is not None:  # Ended (killed) during validation.
        intervals.append((EVAL, pending, t_end))
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


def account(launch: dict, kept: int) -> tuple[dict[str, float], list[tuple[str, float, float]]]:
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
    charge(INIT, start, joined)
    charge(PREP, joined, fit)
    charge(COMPILE, fit, compiled)
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
        seconds[DATA] += waited
        seconds[WASTED] += step_time(split, last_step)
        t_split = steps.time_at(split)
        if t_split > compiled:
            segments.append((GOODPUT, compiled, t_split))
        if last > t_split:
            segments.append((WASTED, t_split, last))
    charge(OTHER, last, end)
    segments += intervals
    return seconds, segments
