"""What a checkpoint directory holds: its committed steps, listed and verified."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping

from etils import epath

from checkpointing import layout, manifest
from checkpointing.manifest import Verdict


@dataclasses.dataclass(frozen=True)
class StepInfo:
    """One committed step, as `list_steps` reports it."""

    step: int
    time: datetime.datetime | None
    size_bytes: int
    topology: str
    metrics: Mapping[str, float]


def _existing(directory: epath.PathLike) -> None:
    if not epath.Path(directory).exists():
        raise ValueError(f"checkpoint directory does not exist. Received: directory={directory}")


def verify_steps(directory: epath.PathLike, step: int | None = None) -> list[Verdict]:
    """Checks the committed steps of `directory` (or only `step`), ascending.

    Raises:
        ValueError: If `directory` does not exist or `step` is not committed.
    """
    _existing(directory)
    if step is not None:
        return [manifest.verify(layout.step_path(directory, step))]
    return [manifest.verify(found.path) for found in layout.committed_steps(directory)]


def list_steps(directory: epath.PathLike) -> list[StepInfo]:
    """The committed steps of `directory`, ascending.

    Raises:
        ValueError: If `directory` does not exist.
    """
    _existing(directory)
    infos = []
    for found in layout.committed_steps(directory):
        record = layout.read_record(found.path)
        stamp = found.commit_timestamp_nsecs
        when = (
            None if stamp is None else datetime.datetime.fromtimestamp(stamp / 1e9, tz=datetime.UTC)
        )
        infos.append(
            StepInfo(
                step=found.step,
                time=when,
                size_bytes=layout.size_bytes(found.path),
                topology="unknown" if record is None else record.topology.summary(),
                metrics={} if record is None else dict(record.metrics),
            )
        )
    return infos
