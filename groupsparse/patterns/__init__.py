"""The five pruning patterns, each turning a score matrix on the (M, K) view into a mask.

>>> import groupsparse as gs
>>> gs.resolve_pattern("group", group_size=32)
GroupWise(group_size=32, balanced=True)
>>> gs.resolve_pattern("2:4")
VectorWise(vector=4, keep=2)
"""

from __future__ import annotations

from typing import Any

from .._resolve import resolve_by_name
from .base import Pattern, check_sparsity
from .block import BlockWise
from .element import ElementWise
from .filter import FilterWise
from .group import GroupWise, group_bounds
from .vector import VectorWise, parse_n_m

__all__ = [
    "PATTERN_NAMES",
    "BlockWise",
    "ElementWise",
    "FilterWise",
    "GroupWise",
    "Pattern",
    "VectorWise",
    "check_sparsity",
    "group_bounds",
    "resolve_pattern",
]

_BY_NAME: dict[str, type[Pattern]] = {
    "element": ElementWise,
    "vector": VectorWise,
    "block": BlockWise,
    "group": GroupWise,
    "filter": FilterWise,
}
PATTERN_NAMES = tuple(_BY_NAME) + ("N:M (e.g. '2:4')",)


def resolve_pattern(pattern: str | Pattern, **pattern_args: Any) -> Pattern:
    """A Pattern from a name ("element", "vector", "block", "group", "filter", "2:4") and its
    arguments, or the Pattern itself."""
    return resolve_by_name(
        "pattern", pattern, Pattern, _BY_NAME, PATTERN_NAMES, pattern_args, special=_n_m
    )


def _n_m(name: str, pattern_args: dict[str, Any]) -> VectorWise | None:
    """An N:M name ("2:4") as its VectorWise, or None for any other name."""
    if parse_n_m(name) is None:
        return None
    if pattern_args:
        raise TypeError(f"an N:M pattern takes no arguments; got {sorted(pattern_args)}")
    return VectorWise.from_n_m(name)
