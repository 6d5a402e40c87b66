"""One way to turn a user's choice into an object: the object itself, or a name and its
arguments (``resolve_pattern``, ``resolve_criterion``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["resolve_by_name"]


def resolve_by_name(
    what: str,
    choice: Any,
    base: type,
    by_name: Mapping[str, Callable[..., Any]],
    allowed: Sequence[str],
    arguments: Mapping[str, Any],
    special: Callable[[str, Mapping[str, Any]], Any] | None = None,
) -> Any:
    """``choice`` itself when it is a ``base`` (then with no ``arguments``); else what
    ``special(name, arguments)`` makes of the name, when not None; else
    ``by_name[name](**arguments)``. Errors name ``what`` ("pattern", "criterion")."""
    if isinstance(choice, base):
        if arguments:
            raise TypeError(
                f"{what} arguments {sorted(arguments)} were given with a {base.__name__} object "
                f"{choice!r}; set them on the object instead"
            )
        return choice
    if not isinstance(choice, str):
        raise TypeError(f"{what} must be a name or a {base.__name__}; got {type(choice).__name__}")
    if special is not None:
        made = special(choice, arguments)
        if made is not None:
            return made
    key = choice.strip().lower()
    if key not in by_name:
        raise ValueError(f"unknown {what} {choice!r}; allowed: {', '.join(allowed)}")
    try:
        return by_name[key](**arguments)
    except TypeError as error:
        raise TypeError(f"bad arguments for {what} {key!r}: {error}") from None
