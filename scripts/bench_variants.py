"""The checkpoint variants scripts/bench.py compares, and how each one restores.

podfit's callback is imported lazily: when `checkpointing.OrbaxCheckpoint` is
not importable, the variant is reported as not measured, with the reason.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import keras


@dataclass
class Variant:
    """One way of checkpointing: how to build its callback and how to observe it.

    Attributes:
        name: key in the JSON and the tables.
        label: what the tables show.
        make: (directory, save_freq, max_to_keep) -> callback, or None for no checkpointing.
        save_method: name of the method that starts one save, patched to count saves.
        save_marker: name of an attribute of the callback that changes whenever a
            save starts (used when there is no save_method). With neither, saves
            are counted by the schedule (every save_freq-th batch).
        background: writes happen off the training thread.
        watched: commits by renaming a temporary entry, so a DirWatcher sees when
            each save became durable.
        restore: (directory, model) -> None, or None when the variant has no restore.
        unavailable: why the variant cannot run in this checkout, or None.
        opt_in: measured only when `--variants` names it (experiments).
    """

    name: str
    label: str
    make: Callable[[str, int, int], keras.callbacks.Callback] | None
    save_method: str | None = None
    save_marker: str | None = None
    background: bool = False
    watched: bool = False
    restore: Callable[[str, keras.Model], None] | None = None
    unavailable: str | None = None
    extra: dict = field(default_factory=dict)
    opt_in: bool = False


def _load_weights_dir(directory: str, model: keras.Model) -> None:
    model.load_weights(directory)


def _load_latest_file(directory: str, model: keras.Model) -> None:
    names = sorted(n for n in os.listdir(directory) if n.endswith((".keras", ".weights.h5")))
    model.load_weights(os.path.join(directory, names[-1]))


def _podfit_variant() -> Variant:
    """podfit's callback, imported lazily: it is developed alongside this harness."""
    name, label = "podfit", "podfit checkpointing.OrbaxCheckpoint"
    try:
        import checkpointing
    except Exception as e:  # noqa: BLE001 - any import failure means "not available"
        return Variant(name, label, None, unavailable=f"import checkpointing failed: {e!r}")
    cls = getattr(checkpointing, "OrbaxCheckpoint", None)
    if cls is None:
        return Variant(
            name, label, None, unavailable="checkpointing has no OrbaxCheckpoint attribute yet"
        )

    def make(directory, save_freq, max_to_keep):
        return cls(directory, save_freq=save_freq, max_to_keep=max_to_keep)

    restore_fn = getattr(checkpointing, "restore_latest", None)
    if restore_fn is not None:

        def restore(directory, model):
            restore_fn(directory, model)

        how = "checkpointing.restore_latest(directory, model)"
    else:
        restore, how = _load_weights_dir, "model.load_weights(directory)"
    return Variant(
        name,
        label,
        make,
        # The callback sets `_last_saved_step` when it submits a save (its `_save`
        # may return without saving); without it, saves are counted by the schedule.
        save_marker="_last_saved_step",
        background=True,
        watched=True,
        restore=restore,
        extra={"restore_api": how, "module": getattr(checkpointing, "__file__", "")},
    )


def _podfit_compressed_variant() -> Variant:
    """Comparison: podfit with Orbax's zstd compression on (opt-in).

    The same callback, built under `checkpointing.layout.orbax_context(compression=True)`
    (Orbax's own default, which keras.callbacks.OrbaxCheckpoint uses): what
    podfit's default of writing uncompressed arrays changes.
    """
    base = _podfit_variant()
    name, label = "podfit_zstd", "podfit with Orbax zstd compression on (comparison)"
    if base.unavailable:
        return Variant(name, label, None, unavailable=base.unavailable, opt_in=True)
    from unittest import mock

    import checkpointing
    from checkpointing import layout

    orbax_context = layout.orbax_context

    def compressed_context(**kwargs):
        return orbax_context(**kwargs, compression=True)

    class Compressed(checkpointing.OrbaxCheckpoint):
        def on_train_begin(self, logs=None):
            with mock.patch.object(layout, "orbax_context", compressed_context):
                super().on_train_begin(logs)

    def make(directory, save_freq, max_to_keep):
        return Compressed(directory, save_freq=save_freq, max_to_keep=max_to_keep)

    return replace(base, name=name, label=label, make=make, opt_in=True)


def variants() -> list[Variant]:
    """All variants, the no-checkpoint baseline first."""

    def keras_orbax(background):
        def make(directory, save_freq, max_to_keep):
            return keras.callbacks.OrbaxCheckpoint(
                directory,
                save_freq=save_freq,
                max_to_keep=max_to_keep,
                save_on_background=background,
            )

        return make

    def model_checkpoint(directory, save_freq, max_to_keep):
        return keras.callbacks.ModelCheckpoint(
            os.path.join(directory, "model.keras"), save_freq=save_freq
        )

    def backup_and_restore(directory, save_freq, max_to_keep):
        # delete_checkpoint=False keeps the last backup for the restore measurement.
        return keras.callbacks.BackupAndRestore(
            directory, save_freq=save_freq, delete_checkpoint=False
        )

    return [
        Variant("none", "no checkpointing", None),
        _podfit_variant(),
        Variant(
            "keras_orbax_bg",
            "keras OrbaxCheckpoint (background)",
            keras_orbax(True),
            save_method="_save_checkpoint",
            background=True,
            watched=True,
            restore=_load_weights_dir,
        ),
        Variant(
            "keras_orbax_sync",
            "keras OrbaxCheckpoint (sync)",
            keras_orbax(False),
            save_method="_save_checkpoint",
            watched=True,
            restore=_load_weights_dir,
        ),
        Variant(
            "model_checkpoint",
            "keras ModelCheckpoint (.keras)",
            model_checkpoint,
            save_method="_save_model",
            restore=_load_latest_file,
        ),
        Variant(
            "backup_and_restore",
            "keras BackupAndRestore",
            backup_and_restore,
            save_method="_save_model",
            restore=_load_latest_file,
        ),
        _podfit_compressed_variant(),
    ]
