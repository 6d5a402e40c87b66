"""groupsparse.timing.time_side_by_side: every function is called warmup + runs times, in
turns whose order is reversed every other turn; with shuffle=True (the benchmarks' A/B) the
order also changes from pair to pair of turns, so no function always runs right after the same
one, while the compiler's timing keeps its fixed order."""

from __future__ import annotations

import pytest

from groupsparse.timing import time_side_by_side


def _calls(names: str, runs: int, warmup: int, shuffle: bool = False) -> list[str]:
    log: list[str] = []
    functions = {name: (lambda name=name: log.append(name)) for name in names}
    times = time_side_by_side(functions, runs, warmup=warmup, shuffle=shuffle)
    assert set(times) == set(names) and all(t >= 0 for t in times.values())
    return log


@pytest.mark.parametrize("shuffle", [False, True])
def test_two_functions_alternate_their_order(shuffle):
    log = _calls("ab", runs=6, warmup=1, shuffle=shuffle)
    assert log[:2] == ["a", "b"]  # the warm-up
    pairs = [log[i : i + 4] for i in range(2, len(log), 4)]
    assert all(pair in (list("abba"), list("baab")) for pair in pairs)  # each order, reversed
    if not shuffle:
        assert log[2:] == ["a", "b", "b", "a", "a", "b", "b", "a", "a", "b", "b", "a"]


def test_without_shuffle_the_order_is_fixed_and_reversed():
    log = _calls("abc", runs=4, warmup=0)
    assert log == list("abccbaabccba")


def test_shuffled_no_one_always_follows_the_same_one():
    names, runs = "abcdef", 20
    timed = _calls(names, runs=runs, warmup=0, shuffle=True)
    assert sorted(timed) == sorted(names * runs)
    turns = [timed[i : i + len(names)] for i in range(0, len(timed), len(names))]
    for first, second in zip(turns[::2], turns[1::2], strict=True):
        assert second == first[::-1]  # each order, then its reverse
    for name in names:
        before = {turn[turn.index(name) - 1] for turn in turns if turn.index(name) > 0}
        assert len(before) > 2, f"{name} always follows one of {before}"
