"""Loading a step as a new model, in any process, whatever topology wrote it.

Stock `keras.saving.load_model(DIR)` reads a step's arrays back onto the
devices that wrote them (it gives Orbax no target sharding without a
distribution, nor for the metric variables a fresh model lacks even with
one), so in one process it fails on a step written by several processes or
on other devices (Orbax: "sharding passed to deserialization should be
specified"); and Keras imports no module outside keras to find a custom
class. `load_model` here rebuilds the
model from the step's stored Keras config, importing the modules the config
records for its custom objects, and reads the arrays through `restore`, into
the shardings of the new model's variables: one device in a plain Python
shell, or the layouts of the distribution in scope.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import keras
from etils import epath
from keras.src.saving import saving_lib
from orbax.checkpoint import v1 as ocp

from checkpointing import layout
from checkpointing.restoring import restore


class LoadArgumentError(ValueError):
    """`load_model` cannot use what it was given (directory, step, modules)."""


def load_model(
    directory: epath.PathLike,
    step: int | None = None,
    *,
    import_modules: Sequence[str] = (),
    custom_objects: Mapping[str, Any] | None = None,
    safe_mode: bool = True,
    verify: bool = True,
) -> keras.Model:
    """Rebuilds the model of a committed step and loads its state into it.

    The model is built from the Keras config stored with the step (the
    `model_config` checkpointable, as `keras.callbacks.OrbaxCheckpoint`
    writes it), compiled from its compile config, and every array (weights,
    optimizer state) is read into the current devices through `restore`: a
    step written by any number of processes, devices or mesh shapes loads in
    one plain process. Under a `keras.distribution` scope the variables get
    its layouts instead; with several processes, call it on every process.

    Custom classes and functions are found as Keras finds them (registered
    with `keras.saving.register_keras_serializable`, or in `custom_objects`).
    Those still unknown are looked for in the module the config records for
    each of them (e.g. `trainer.models` for podfit's `PositionEmbedding`),
    which is imported: importing runs that module's code, so load only steps
    you trust, or pass `custom_objects`.

    Args:
        directory: The checkpoint root (local or `gs://...`).
        step: A committed global step; None for the latest.
        import_modules: Modules to import first (that register the model's
            custom objects), e.g. `["my_project.layers"]`.
        custom_objects: As for `keras.saving.load_model`.
        safe_mode: As for `keras.saving.load_model` (no lambda deserialized).
        verify: Check the step against its manifest before reading it.

    Returns:
        The compiled model, with the step's weights and optimizer state.

    Raises:
        LoadArgumentError: A ValueError naming the argument: the directory
            does not exist or has no committed step, `step` is not committed,
            the step has no model config (saved with `save_weights_only`) or
            no compile config, or a module cannot be imported or leaves a
            custom object unknown.
        CheckpointCorruptError: If the step fails verification.

    Example:
        ```python
        import checkpointing

        model = checkpointing.load_model("runs/default/checkpoints")
        model.predict(tokens)
        ```
    """
    root = layout.root(directory)
    step, path = _committed_step(root, step)
    config = _model_config(path, step)
    if isinstance(import_modules, str):
        import_modules = [import_modules]
    for module in import_modules:
        _import(module, f"import_modules={list(import_modules)}")
    _import_recorded(config, custom_objects, step)
    if not config.get("compile_config"):
        raise LoadArgumentError(
            f"step {step} of {directory} has no compile config, so its optimizer state has no "
            "optimizer to go into; build and compile the model yourself and call "
            f"checkpointing.restore. Received: step={step}"
        )
    model = saving_lib._model_from_config(  # What keras.saving.load_model calls.
        json.dumps(config), custom_objects=custom_objects, compile=True, safe_mode=safe_mode
    )
    restore(root, model, step, verify=verify)
    return model


def _committed_step(root: str, step: int | None) -> tuple[int, epath.Path]:
    """(the step, its directory): `step`, or the latest if None; one listing."""
    if not epath.Path(root).is_dir():
        raise LoadArgumentError(f"checkpoint directory does not exist. Received: directory={root}")
    paths = {found.step: epath.Path(found.path) for found in layout.committed_steps(root)}
    steps = sorted(paths)
    if not steps:
        raise LoadArgumentError(
            f"no committed checkpoint step in the directory. Received: directory={root}"
        )
    if step is None:
        step = steps[-1]
    if step not in paths:
        raise LoadArgumentError(
            f"step {step} is not a committed step of {root} (committed: {steps}). "
            f"Received: step={step}"
        )
    return step, paths[step]


def _model_config(path: epath.Path, step: int) -> dict[str, Any]:
    """The step's serialized Keras model (a dict)."""
    if layout.MODEL_CONFIG not in layout.saved_checkpointables(path):
        raise LoadArgumentError(
            f"step {step} has no model config (saved with save_weights_only=True); build the "
            f"model yourself and call checkpointing.restore. Received: step={step}"
        )
    with layout.orbax_context():
        stored = ocp.load_checkpointables(path, {layout.MODEL_CONFIG: None})
    return json.loads(stored[layout.MODEL_CONFIG]["config"])


def _import(module: str, received: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError as e:
        raise LoadArgumentError(
            f"cannot import module {module!r} ({type(e).__name__}: {e}); make it importable "
            f"(install it, or add its folder to PYTHONPATH). Received: {received}"
        ) from e


def _custom_entries(node: Any) -> Iterator[dict[str, Any]]:
    """Every serialized object of the config that is neither Keras' nor a builtin."""
    if isinstance(node, dict):
        if "class_name" in node and "module" in node:
            module = node["module"]
            if not (module in ("keras", "builtins") or str(module).startswith("keras.")):
                yield node
        for value in node.values():
            yield from _custom_entries(value)
    elif isinstance(node, list):
        for value in node:
            yield from _custom_entries(value)


def _names(entry: dict[str, Any]) -> list[str]:
    """The names Keras may look the object up by."""
    if entry["class_name"] == "function":
        names = [entry.get("registered_name"), entry.get("config")]
    else:
        names = [entry.get("registered_name"), entry["class_name"]]
    return [n for n in names if isinstance(n, str)]


def _known(entry: dict[str, Any], custom_objects: Mapping[str, Any] | None) -> bool:
    return any(
        keras.saving.get_registered_object(name, custom_objects=dict(custom_objects or {}))
        is not None
        for name in _names(entry)
    )


def _import_recorded(
    config: dict[str, Any], custom_objects: Mapping[str, Any] | None, step: int
) -> None:
    """Imports the recorded module of each custom object still unknown; checks it is known then."""
    for entry in _custom_entries(config):
        if _known(entry, custom_objects):
            continue
        name, module = (_names(entry) or [str(entry["class_name"])])[0], entry["module"]
        if not module or module == "__main__":
            raise LoadArgumentError(
                f"step {step}'s model config names {name!r}, defined in the script that trained "
                "it; import a module that registers it (import_modules=, or --import) or pass "
                f"custom_objects={{{name!r}: ...}}. Received: step={step}"
            )
        _import(module, f"module={module} (recorded for {name!r} in step {step})")
        if not _known(entry, custom_objects):
            raise LoadArgumentError(
                f"importing {module!r} did not register {name!r}, which step {step}'s model "
                "config names (decorate it with @keras.saving.register_keras_serializable, "
                f"or pass import_modules= or custom_objects=). Received: module={module}"
            )
