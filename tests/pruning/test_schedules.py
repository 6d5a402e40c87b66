"""OneShot and the cubic Gradual schedule of Zhu & Gupta 2017."""

from __future__ import annotations

import pytest

import groupsparse as gs


def cubic(step: int, start: int, end: int, every: int, initial: float, final: float) -> float:
    """Zhu & Gupta's s_t, evaluated at the last update step at or before ``step``."""
    if step < start:
        return 0.0
    last = end if step >= end else start + (step - start) // every * every
    return final + (initial - final) * (1 - (last - start) / (end - start)) ** 3


@pytest.mark.parametrize(
    ("start", "end", "every", "initial"), [(0, 100, 10, 0.0), (5, 42, 4, 0.3), (3, 4, 1, 0.1)]
)
def test_gradual_is_cubic_and_updates_every_n_steps(start, end, every, initial):
    schedule = gs.Gradual(start=start, end=end, every=every, initial_sparsity=initial)
    updates = [step for step in range(end + 20) if schedule.updates_at(step)]
    assert updates == sorted(set(range(start, end, every)) | {end})
    for step in range(end + 20):
        assert schedule.sparsity_at(step, 0.9) == pytest.approx(
            cubic(step, start, end, every, initial, 0.9)
        )
    assert schedule.sparsity_at(start, 0.9) == pytest.approx(initial)
    assert schedule.sparsity_at(end, 0.9) == 0.9
    values = [schedule.sparsity_at(step, 0.9) for step in range(end + 1)]
    assert values == sorted(values), "sparsity never decreases"


def test_one_shot():
    assert gs.OneShot().updates_at(0) and not gs.OneShot().updates_at(1)
    later = gs.OneShot(at=3)
    assert [later.sparsity_at(step, 0.5) for step in range(5)] == [0, 0, 0, 0.5, 0.5]
    assert [step for step in range(6) if later.updates_at(step)] == [3]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"start": 10, "end": 10, "every": 1}, "end must be after start"),
        ({"start": -1, "end": 10, "every": 1}, "start must be an integer step >= 0"),
        ({"start": 0, "end": 10, "every": 0}, "every must be an integer number of steps >= 1"),
        (
            {"start": 0, "end": 10, "every": 2, "initial_sparsity": 1.0},
            r"initial_sparsity must be in \[0, 1\)",
        ),
    ],
)
def test_gradual_rejects_bad_arguments(arguments, message):
    with pytest.raises(ValueError, match=message):
        gs.Gradual(**arguments)


def test_one_shot_rejects_negative_step():
    with pytest.raises(ValueError, match="at must be an integer step >= 0"):
        gs.OneShot(at=-1)
