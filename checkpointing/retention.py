"""Which committed steps survive: Orbax preservation policies, composed.

A step is kept if any rule keeps it (`AnyPreservationPolicy`); Orbax deletes
the others after each commit. Nothing else in this package deletes a step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from orbax.checkpoint import v1 as ocp

_policies = ocp.training.preservation_policies


def _metric_fn(monitor: str, minimize: bool):
    worst = math.inf if minimize else -math.inf

    def get(metrics: Mapping[str, float] | None) -> float:
        # Steps saved without the monitored value rank last.
        if not metrics or monitor not in metrics:
            return worst
        value = float(metrics[monitor])
        return worst if math.isnan(value) else value

    return get


def preservation_policy(
    *,
    max_to_keep: int | None,
    keep_best: int | None = None,
    keep_period: int | None = None,
    monitor: str = "val_loss",
    minimize: bool = True,
):
    """The Orbax policy for the callback's retention arguments.

    Args:
        max_to_keep: Keep the latest N steps (`LatestN`); None keeps all.
        keep_best: Also keep the best N steps by `monitor` (`BestN`, reading
            the metrics saved with each step).
        keep_period: Also keep, for good, every step that is a multiple of N
            (`EveryNSteps`).
        monitor: The metric `keep_best` ranks by.
        minimize: Whether lower `monitor` values are better.

    Returns:
        An Orbax `PreservationPolicy`.
    """
    rules = [_policies.LatestN(max_to_keep)]
    if keep_best is not None:
        rules.append(
            _policies.BestN(
                get_metric_fn=_metric_fn(monitor, minimize),
                # BestN keeps the tail of the sorted list.
                reverse=minimize,
                n=keep_best,
                keep_checkpoints_without_metrics=False,
            )
        )
    if keep_period is not None:
        rules.append(_policies.EveryNSteps(keep_period))
    if len(rules) == 1:
        return rules[0]
    return _policies.AnyPreservationPolicy(rules)
