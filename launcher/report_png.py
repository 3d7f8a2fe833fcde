"""report.png of `python -m launcher.report`: a timeline of every launch by phase, the loss across launches."""

from __future__ import annotations

from etils import epath

from launcher.goodput import (
    BETWEEN,
    COMPILE,
    EVAL,
    GOODPUT,
    INIT,
    OTHER,
    PREP,
    RESTORE,
    SAVE,
    WASTED,
)
from launcher.report import Report, read_jsonl

# Data loading is spread over the steps: drawn inside their bars, not on its own.
_COLORS = {
    GOODPUT: "#2ca02c",
    INIT: "#9467bd",
    PREP: "#c5b0d5",
    RESTORE: "#17becf",
    COMPILE: "#ff7f0e",
    SAVE: "#1f77b4",
    EVAL: "#bcbd22",
    WASTED: "#d62728",
    BETWEEN: "#7f7f7f",
    OTHER: "#e0e0e0",
}


def _loss_runs(workdir: epath.Path) -> list[list[tuple[int, float]]]:
    """metrics.jsonl's (step, loss) lines, one list per launch that logged.

    A launch's logger counts its `time` from its own start: a line whose time
    is below the previous one's begins the next launch's run.
    """
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    runs: list[list[tuple[int, float]]] = []
    previous = None
    for record in read_jsonl(path):
        if "epoch" in record or "loss" not in record or "time" not in record:
            continue
        if previous is None or record["time"] < previous:
            runs.append([])
        previous = record["time"]
        runs[-1].append((record["step"], record["loss"]))
    return runs


def write_png(report: Report, path: epath.PathLike, workdir: epath.PathLike) -> epath.Path:
    """Draws the timeline of every launch by phase and the loss curve into `path` (PNG)."""
    import io  # noqa: PLC0415

    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt  # noqa: PLC0415
    from matplotlib.patches import Patch  # noqa: PLC0415

    runs = _loss_runs(epath.Path(workdir))
    fig, (timeline, losses) = plt.subplots(
        2, 1, figsize=(9, 5.2), gridspec_kw={"height_ratios": [1.1, 1]}
    )
    origin = report.launches[0].start
    for row, launch in enumerate(report.launches):
        for category, t0, t1 in launch.segments:
            timeline.barh(
                row, t1 - t0, left=t0 - origin, height=0.6, color=_COLORS[category], linewidth=0
            )
    timeline.set_yticks(
        range(len(report.launches)),
        [f"launch {i + 1}" for i in range(len(report.launches))],
    )
    timeline.invert_yaxis()
    timeline.set_xlabel("seconds since the first start")
    timeline.set_title(
        f"goodput {100 * report.goodput:.1f}% of {report.total_s:.0f}s, "
        f"{report.wasted_steps} step(s) computed twice",
        fontsize=10,
    )
    used = {c for launch in report.launches for c, _, _ in launch.segments}
    timeline.legend(
        handles=[Patch(color=_COLORS[c], label=c) for c in _COLORS if c in used],
        fontsize=7,
        ncol=4,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.35),
        frameon=False,
    )
    for i, run in enumerate(runs):
        # Earlier runs wider, so that steps computed again show under the later ones.
        steps, values = zip(*run, strict=True)
        width = 1.0 + 3.0 * (len(runs) - 1 - i) / max(1, len(runs) - 1)
        losses.plot(steps, values, linewidth=width, alpha=0.8, label=f"run {i + 1}")
    losses.set_xlabel("step")
    losses.set_ylabel("loss")
    losses.set_title("loss per step (metrics.jsonl), one line per launch that logged", fontsize=10)
    if runs:
        losses.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    target = epath.Path(path)
    target.write_bytes(buffer.getvalue())
    return target
