"""Checks of the Pruner's arguments, all made before anything on the model changes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn
from torch.nn.utils import parametrize

from ..patterns import Pattern, VectorWise
from .allocation import Allocation
from .criteria import Criterion
from .schedules import Gradual, OneShot, Schedule
from .sharding import is_sharded

__all__ = [
    "check_calibration",
    "check_fixed_sparsity",
    "check_gradual_start",
    "check_plain_weights",
]


def check_fixed_sparsity(
    pattern: Pattern, sparsity: float | None, allocation: Allocation, schedule: Schedule
) -> float | None:
    """An N:M pattern fixes the sparsity: fill it in, and refuse anything that disagrees."""
    implied = pattern.implied_sparsity if isinstance(pattern, VectorWise) else None
    if implied is None:
        return sparsity
    fixed = f"pattern {pattern.describe()!r} fixes the sparsity at {implied}"
    if allocation == "global":
        raise ValueError(f"{fixed}; allocation='global' cannot change it (use 'uniform')")
    if not isinstance(schedule, OneShot):
        raise TypeError(f"{fixed}; it cannot follow a gradual schedule (use schedule=OneShot())")
    values = list(allocation.values()) if isinstance(allocation, Mapping) else []
    for value in values + ([sparsity] if sparsity is not None else []):
        if isinstance(value, (int, float)) and abs(value - implied) > 1e-9:
            raise ValueError(f"{fixed}; got sparsity {value} (leave sparsity out)")
    if sparsity is None and not isinstance(allocation, Mapping):
        return implied
    return sparsity


def check_gradual_start(
    schedule: Schedule, sparsity: float | None, targets: Mapping[str, float] | None
) -> None:
    """A Gradual schedule starts at or below the lowest target sparsity."""
    if not isinstance(schedule, Gradual):
        return
    lowest = sparsity if targets is None else min(targets.values())
    if schedule.initial_sparsity > lowest:
        raise ValueError(
            f"Gradual(initial_sparsity={schedule.initial_sparsity}) is above the target "
            f"sparsity {lowest}; it must be at most the target"
        )


def check_plain_weights(layers: Mapping[str, nn.Module], attached: set[int]) -> None:
    """Each layer's weight is a plain Parameter, and not one whose ``id`` is in ``attached``
    (the weights of the Pruners already on a model)."""
    for name, module in layers.items():
        if parametrize.is_parametrized(module, "weight") or not isinstance(
            module.weight, nn.Parameter
        ):
            raise ValueError(
                f"layer {name!r} has a reparametrized weight (torch.nn.utils.prune or "
                "parametrize); make it plain first, e.g. torch.nn.utils.prune.remove(module, 'weight')"
            )
        if id(module.weight) in attached:
            raise ValueError(
                f"layer {name!r} already has a Pruner attached; call its remove() first"
            )


def check_calibration(
    criterion: Criterion, calibration: Any, loss_fn: Any, layers: Mapping[str, nn.Module]
) -> None:
    """``calibration`` and ``loss_fn`` go together, with "taylor" only, and not with sharded
    weights."""
    if not criterion.needs_saliency:
        if calibration is not None or loss_fn is not None:
            raise ValueError(
                f"calibration and loss_fn are only used by criterion='taylor'; got criterion={criterion!r}"
            )
        return
    if (calibration is None) != (loss_fn is None):
        raise ValueError(
            "criterion 'taylor' needs both calibration=<iterable of batches> and "
            "loss_fn=<callable(model, batch) -> loss>, or neither (in a Pruner, to use the "
            "training gradients)"
        )
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(
            f"loss_fn must be a callable(model, batch) -> loss; got {type(loss_fn).__name__}"
        )
    if calibration is not None and not isinstance(calibration, Iterable):
        raise TypeError(
            f"calibration must be an iterable of batches; got {type(calibration).__name__}"
        )
    if calibration is not None and any(is_sharded(m.weight) for m in layers.values()):
        raise ValueError(
            "calibration= and loss_fn= cannot score sharded weights (FSDP2's fully_shard): "
            "their gradients do not reach the sharded parameters. Leave them out: 'taylor' "
            "then scores the training gradients, which FSDP averages over the ranks"
        )
