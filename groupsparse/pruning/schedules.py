"""Schedules: the target sparsity at each training step, and the steps at which masks change.

A :class:`~groupsparse.Pruner` starts at step 0 and counts one step per ``pruner.step()``.

>>> schedule = Gradual(start=0, end=100, every=10)
>>> [round(schedule.sparsity_at(step, 0.9), 4) for step in (0, 9, 10, 50, 100, 200)]
[0.0, 0.0, 0.2439, 0.7875, 0.9, 0.9]
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from ..patterns import check_sparsity

__all__ = ["Gradual", "OneShot", "Schedule"]


def _check_step(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer step >= 0; got {value!r}")


class Schedule(ABC):
    """When masks are updated and to what sparsity; subclasses are frozen dataclasses."""

    @abstractmethod
    def updates_at(self, step: int) -> bool:
        """Whether the masks are recomputed at ``step``."""

    @abstractmethod
    def sparsity_at(self, step: int, target: float) -> float:
        """The sparsity the masks have at ``step`` for a final ``target``."""


@dataclass(frozen=True)
class OneShot(Schedule):
    """Prune to the target at step ``at`` (default: at once) and keep the masks from then on.

    >>> OneShot().sparsity_at(0, 0.75)
    0.75
    """

    at: int = 0

    def __post_init__(self) -> None:
        _check_step(self.at, "at")

    def updates_at(self, step: int) -> bool:
        return step == self.at

    def sparsity_at(self, step: int, target: float) -> float:
        return target if step >= self.at else 0.0


@dataclass(frozen=True)
class Gradual(Schedule):
    """The cubic schedule of Zhu & Gupta 2017, "To prune, or not to prune".

    ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3`` with ``t0 = start``,
    ``n * dt = end - start``, ``s_i = initial_sparsity`` and ``s_f`` the target. Masks are
    recomputed at ``start``, every ``every`` steps after it, and at ``end``; between updates
    the sparsity stays at its last update's value; before ``start`` nothing is pruned and from
    ``end`` on the sparsity is ``s_f``.

    >>> Gradual(start=0, end=2000, every=100).updates_at(300)
    True
    """

    start: int
    end: int
    every: int
    initial_sparsity: float = 0.0

    def __post_init__(self) -> None:
        _check_step(self.start, "start")
        _check_step(self.end, "end")
        if self.end <= self.start:
            raise ValueError(f"end must be after start; got start={self.start}, end={self.end}")
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            raise ValueError(f"every must be an integer number of steps >= 1; got {self.every!r}")
        object.__setattr__(
            self, "initial_sparsity", check_sparsity(self.initial_sparsity, name="initial_sparsity")
        )

    def updates_at(self, step: int) -> bool:
        if not self.start <= step <= self.end:
            return False
        return (step - self.start) % self.every == 0 or step == self.end

    def last_update(self, step: int) -> int | None:
        """The latest update step at or before ``step`` (None before ``start``)."""
        if step < self.start:
            return None
        if step >= self.end:
            return self.end
        return self.start + (step - self.start) // self.every * self.every

    def sparsity_at(self, step: int, target: float) -> float:
        last = self.last_update(step)
        if last is None:
            return 0.0
        remaining = 1.0 - (last - self.start) / (self.end - self.start)
        return target + (self.initial_sparsity - target) * remaining**3
