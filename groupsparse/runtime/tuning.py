"""The knobs of the kernels and of kernel selection: one frozen dataclass, read through
``current()``. Each field can be set for a process by an environment variable
(``GROUPSPARSE_<FIELD>``, e.g. ``GROUPSPARSE_FUSED_EPILOGUE_EDGE=1.0``) and for a block of code
by ``override()``, which is how experiments and tests change them; nothing else does. Why each
value is what it is: docs/decisions/tuning.md.

    >>> with override(fused_epilogue_edge=1.0):
    ...     fast = gs.compile_sparse(model, x)   # the faster kernel bare wins outright
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["Tuning", "current", "override"]


@dataclass(frozen=True)
class Tuning:
    """Values the kernels and the plan pass read."""

    # kernel selection: a kernel that does not fuse the ReLU and shortcut it would get later
    # is chosen over one that does only when its bare timing is this much faster
    fused_epilogue_edge: float = 1.15
    # torch-ops kernel: bytes of gathered columns per tile (they stay in cache for the GEMM)
    tile_bytes: int = 4 << 20
    # torch-ops kernel: at least this many output pixels or tokens per tile (the GEMM's width)
    min_tile_pixels: int = 256
    # torch-ops kernel: below this output width a stride-1 conv gathers on the wide grid
    narrow_min_width: int = 32
    # torch-ops kernel: padded inputs this large zero only their border
    pad_in_place_numel: int = 1 << 18

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"tuning {field.name} must be a positive number; got {value!r}")


def _from_environment() -> Tuning:
    values = {}
    for field in dataclasses.fields(Tuning):
        text = os.environ.get(f"GROUPSPARSE_{field.name.upper()}")
        if text is not None:
            kind = float if field.type in ("float", float) else int
            try:
                values[field.name] = kind(text)
            except ValueError as error:
                raise ValueError(
                    f"GROUPSPARSE_{field.name.upper()}={text!r} is not a valid {kind.__name__}"
                ) from error
    return Tuning(**values)


_state = threading.local()
_default: Tuning | None = None


def current() -> Tuning:
    """The values in force: the innermost ``override`` on this thread, else the environment's."""
    global _default
    stack = getattr(_state, "stack", None)
    if stack:
        return stack[-1]
    if _default is None:
        _default = _from_environment()
    return _default


@contextlib.contextmanager
def override(**changes) -> Iterator[Tuning]:
    """Run a block with some values changed (checked like the dataclass's own)."""
    changed = dataclasses.replace(current(), **changes)
    stack = _state.__dict__.setdefault("stack", [])
    stack.append(changed)
    try:
        yield changed
    finally:
        stack.pop()
