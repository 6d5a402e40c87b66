"""Pruning: criteria score weights, allocation splits the sparsity across layers, schedules say
when, and the Pruner keeps the masks on the model while it trains.

>>> import groupsparse as gs
>>> masks = gs.prune(model, pattern="group", sparsity=0.75, group_size=32)
"""

from .allocation import (
    ALLOCATIONS,
    EXCLUDE_RULES,
    global_allocation,
    not_accelerated,
    select_layers,
)
from .criteria import (
    CRITERION_NAMES,
    Criterion,
    Magnitude,
    Random,
    Taylor,
    resolve_criterion,
    taylor_saliency,
)
from .pruner import Pruner, existing_masks, prune
from .schedules import Gradual, OneShot, Schedule

__all__ = [
    "ALLOCATIONS",
    "CRITERION_NAMES",
    "EXCLUDE_RULES",
    "Criterion",
    "Gradual",
    "Magnitude",
    "OneShot",
    "Pruner",
    "Random",
    "Schedule",
    "Taylor",
    "existing_masks",
    "global_allocation",
    "not_accelerated",
    "prune",
    "resolve_criterion",
    "select_layers",
    "taylor_saliency",
]
