"""Matching a step's saved tree to a built model: what to read, into which variable."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import keras
from absl import logging
from etils import epath

from checkpointing.metadata import flatten_with_paths


def _groups(model: keras.Model) -> dict[str, list]:
    """The variable groups of `model.get_state_tree()`, in its order."""
    return {
        "trainable_variables": list(model.trainable_variables),
        "non_trainable_variables": list(model.non_trainable_variables),
        "optimizer_variables": list(model.optimizer.variables),
        "metrics_variables": list(model.metrics_variables),
    }


def _strip_first(path: str) -> str:
    return path.split("/", 1)[-1]


# How many mismatched variables a CheckpointMismatchError names before "and N more".
_MAX_LISTED = 10


class CheckpointMismatchError(ValueError):
    """A checkpoint written by a different model: variables differ in shape or presence.

    Raised by `restore`/`restore_latest` (on every process) after comparing
    every variable, not at the first difference.

    Attributes:
        mismatches: One entry per differing variable,
            `"<group>/<path> saved shape <s> vs model shape <m>"` (`missing`
            for a side that lacks the variable).
    """

    def __init__(self, where: epath.Path, mismatches: list[str], model_name: str):
        listed = "; ".join(mismatches[:_MAX_LISTED])
        if len(mismatches) > _MAX_LISTED:
            listed += f"; and {len(mismatches) - _MAX_LISTED} more"
        super().__init__(
            f"checkpoint {where} is from a different model: {len(mismatches)} variable(s) "
            f"differ in shape or presence: {listed}. Received: model={model_name!r}"
        )
        self.mismatches = list(mismatches)


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in value.shape)


def _match(group: str, saved_paths: list[str], variables: list) -> tuple[dict, list, list]:
    """(saved path -> model variable, saved paths the model lacks, model variables not saved).

    Matched by path. Optimizer variables are also matched without the
    optimizer's own name, which Keras makes unique per process ("adam",
    "adam_1", ...).
    """
    by_path = {v.path: v for v in variables}
    key = str  # The path itself.
    if group == "optimizer_variables" and not all(p in by_path for p in saved_paths):
        by_suffix = {_strip_first(v.path): v for v in variables}
        if len(by_suffix) == len(variables):
            by_path, key = by_suffix, _strip_first
    matched = {p: by_path[key(p)] for p in saved_paths if key(p) in by_path}
    missing = [p for p in saved_paths if key(p) not in by_path]
    used = {id(v) for v in matched.values()}
    unsaved = [v for v in variables if id(v) not in used]
    return matched, missing, unsaved


def _unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def abstract_targets(model: keras.Model, saved: Mapping[str, Any], where: epath.Path):
    """(abstract tree in the saved structure, {group: {path: variable}}).

    Raises:
        CheckpointMismatchError: Listing every variable whose shape differs
            or that only one side has.
    """
    groups = _groups(model)
    abstract, matched, mismatches = {}, {}, []
    for group in saved:
        if group not in groups:
            raise ValueError(f"unknown variable group in {where}. Received: {group!r}")
    # Only the groups the step holds are compared (save_weights_only: no optimizer_variables).
    for group in (g for g in groups if g in saved):
        variables = groups[group]
        flat_saved = flatten_with_paths(saved[group])
        if group == "metrics_variables":
            # Compiled metrics get their variables on the first fit/evaluate;
            # they are running averages reset each epoch, so a fresh model may
            # lack some. Restore those it has.
            known = {v.path for v in variables}
            skipped = sorted(p for p in flat_saved if p not in known)
            if skipped:
                logging.info("restore: model has no metric variables %s yet; skipped", skipped)
            flat_saved = {p: m for p, m in flat_saved.items() if p in known}
            if not flat_saved:
                continue
        found, missing, unsaved = _match(group, list(flat_saved), variables)
        mismatches += [
            f"{group}/{p} saved shape {_shape(flat_saved[p])} vs model: missing" for p in missing
        ]
        if group != "metrics_variables":
            mismatches += [
                f"{group}/{v.path} saved: missing vs model shape {_shape(v)}" for v in unsaved
            ]
        flat_abstract = {}
        for path, variable in found.items():
            meta, value = flat_saved[path], variable.value
            if _shape(meta) != _shape(value):
                mismatches.append(
                    f"{group}/{path} saved shape {_shape(meta)} vs model shape {_shape(value)}"
                )
                continue
            # The target sharding is the variable's current one: Orbax reads
            # only the shards this process holds, whatever layout wrote them.
            flat_abstract[path] = jax.ShapeDtypeStruct(
                value.shape, value.dtype, sharding=getattr(value, "sharding", None)
            )
        matched[group] = found
        abstract[group] = _unflatten(flat_abstract)
    if mismatches:
        raise CheckpointMismatchError(where, mismatches, model.name)
    return abstract, matched
