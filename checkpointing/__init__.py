"""Async, multi-process Orbax checkpoints for Keras 3 on JAX.

A library: imports jax, keras, orbax and etils, never trainer/ or launcher/.

- `OrbaxCheckpoint`: the callback (drop-in for `keras.callbacks.OrbaxCheckpoint`),
  configured by keyword arguments or one `CheckpointOptions`.
- `restore(directory, model, step)`, `restore_latest(directory, model)`:
  read a step into a built model, resharded onto the current topology.
- `load_model(directory, step=None)`: a new model from a step's stored
  config, its arrays read into the current devices (any process, any
  topology that wrote it).
- `list_steps(directory)`: the committed steps.
- `verify_steps(directory)`: each step checked against its manifest.
- `python -m checkpointing list|inspect|export|verify`: the same from a shell.

Names are imported on first use, so that `python -m checkpointing` can pick
the Keras backend before keras is imported.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING

_EXPORTS = {
    "OrbaxCheckpoint": "checkpointing.callback",
    "CheckpointCorruptError": "checkpointing.manifest",
    "CheckpointOptions": "checkpointing.options",
    "CheckpointMismatchError": "checkpointing.restoring",
    "CheckpointWriteError": "checkpointing.coordination",
    "PeerFailedError": "checkpointing.coordination",
    "Progress": "checkpointing.metadata",
    "StepRecord": "checkpointing.metadata",
    "Topology": "checkpointing.metadata",
    "Versions": "checkpointing.metadata",
    "Restored": "checkpointing.restoring",
    "StepInfo": "checkpointing.steps",
    "list_steps": "checkpointing.steps",
    "load_model": "checkpointing.loading",
    "restore": "checkpointing.restoring",
    "restore_latest": "checkpointing.restoring",
    "verify_steps": "checkpointing.steps",
}

__all__ = sorted(_EXPORTS)

# Keras on JAX only (as trainer/ does): a fresh shell that imports this package
# first gets the JAX backend; another one asked for is refused.
if os.environ.setdefault("KERAS_BACKEND", "jax") != "jax":
    raise ImportError(
        f"checkpointing needs KERAS_BACKEND=jax. Received: KERAS_BACKEND={os.environ['KERAS_BACKEND']}"
    )

if TYPE_CHECKING:  # For type checkers and IDEs; at run time, see __getattr__.
    from checkpointing.callback import OrbaxCheckpoint  # noqa: F401
    from checkpointing.coordination import CheckpointWriteError, PeerFailedError  # noqa: F401
    from checkpointing.loading import load_model  # noqa: F401
    from checkpointing.manifest import CheckpointCorruptError  # noqa: F401
    from checkpointing.metadata import Progress, StepRecord, Topology, Versions  # noqa: F401
    from checkpointing.options import CheckpointOptions  # noqa: F401
    from checkpointing.restoring import (  # noqa: F401
        CheckpointMismatchError,
        Restored,
        restore,
        restore_latest,
    )
    from checkpointing.steps import StepInfo, list_steps, verify_steps  # noqa: F401


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'checkpointing' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
