"""The five pruning patterns, each turning a score matrix on the (M, K) view into a mask.

>>> import groupsparse as gs
>>> gs.resolve_pattern("group", group_size=32)
GroupWise(group_size=32, balanced=True)
>>> gs.resolve_pattern("2:4")
VectorWise(vector=4, keep=2)
"""

from __future__ import annotations

from typing import Any

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
    if isinstance(pattern, Pattern):
        if pattern_args:
            raise TypeError(
                f"pattern arguments {sorted(pattern_args)} were given with a Pattern object "
                f"{pattern!r}; set them on the object instead"
            )
        return pattern
    if not isinstance(pattern, str):
        raise TypeError(f"pattern must be a name or a Pattern; got {type(pattern).__name__}")
    if parse_n_m(pattern) is not None:
        if pattern_args:
            raise TypeError(f"an N:M pattern takes no arguments; got {sorted(pattern_args)}")
        return VectorWise.from_n_m(pattern)
    key = pattern.strip().lower()
    if key not in _BY_NAME:
        raise ValueError(f"unknown pattern {pattern!r}; allowed: {', '.join(PATTERN_NAMES)}")
    cls = _BY_NAME[key]
    try:
        return cls(**pattern_args)
    except TypeError as error:
        raise TypeError(f"bad arguments for pattern {key!r}: {error}") from None
