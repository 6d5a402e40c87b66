"""The one harness's timers. Each returns ``Stats`` (median, quartiles, min, max of per-call
milliseconds) per function.

- ``interleaved``: the project's A/B (``groupsparse.timing.time_side_by_side``): one call of
  each function in turn, the order reversed every other turn, so that drift in the machine's
  speed falls on all of them alike. For functions that share torch's thread pool.
- ``blocks``: for runtimes with their own thread pools (OpenVINO's against torch's): each
  function runs a block of consecutive calls, one untimed call first, then the next function
  its block; never alternating single calls, whose pools' spinning threads would steal each
  other's cores. Each call has its own clock (``torch.utils.benchmark.Timer.timeit`` would
  add two warm-up calls to every block and return only the block's mean).
- ``alone``: one function by ``torch.utils.benchmark.Timer.blocked_autorange`` (CUDA is
  synchronized around each block), for measurements that are not comparisons.
- ``graph_replays``: functions captured in CUDA graphs, replays timed in turns with CUDA
  events (the GPU's time alone).
- ``OtherLoad``: how much of the machine other processes used meanwhile, so that noisy rows
  can be told apart on a shared machine.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.utils import benchmark

__all__ = ["OtherLoad", "Stats", "alone", "blocks", "graph_replays", "interleaved"]


@dataclass(frozen=True)
class Stats:
    """Per-call milliseconds of one function."""

    median_ms: float
    q1_ms: float
    q3_ms: float
    min_ms: float
    max_ms: float
    runs: int

    @classmethod
    def from_ms(cls, samples: list[float]) -> Stats:
        if not samples:
            raise ValueError("no samples")
        ordered = sorted(samples)
        if len(ordered) > 1:
            q1, median, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
        else:
            q1 = median = q3 = ordered[0]
        return cls(median, q1, q3, ordered[0], ordered[-1], len(ordered))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def interleaved(
    functions: dict[str, Callable[[], Any]], runs: int, warmup: int = 1
) -> dict[str, Stats]:
    """Each function called once per turn, ``runs`` turns after ``warmup`` untimed ones (under
    no_grad; CUDA synchronized around each call where it is in use), the order shuffled every
    other turn and reversed in between (``time_side_by_side(shuffle=True)``)."""
    from groupsparse.timing import time_side_by_side

    samples: dict[str, list[float]] = {name: [] for name in functions}

    def recorded(name: str, function: Callable[[], Any]) -> Callable[[], Any]:
        def call() -> Any:
            start = time.perf_counter()
            result = function()
            samples[name].append((time.perf_counter() - start) * 1e3)
            return result

        return call

    # time_side_by_side drives the turns; the statistics come from each call's own clock, so
    # that the median and the spread describe the same samples. Its synchronization sits
    # outside these clocks, and a CUDA call here is synchronized inside them:
    synchronize = torch.cuda.synchronize if _cuda_in_use() else (lambda: None)

    def synchronized(function: Callable[[], Any]) -> Callable[[], Any]:
        def call() -> Any:
            result = function()
            synchronize()
            return result

        return call

    time_side_by_side(
        {name: recorded(name, synchronized(f)) for name, f in functions.items()},
        runs,
        warmup,
        shuffle=True,  # no variant always runs right after the same one
    )
    return {name: Stats.from_ms(values[warmup:]) for name, values in samples.items()}


def blocks(
    functions: dict[str, Callable[[], Any]], runs: int, block: int = 5, warmup: int = 1
) -> dict[str, Stats]:
    """``runs`` timed calls of each function, in blocks of ``block`` consecutive calls (each
    block after one untimed call: the hand-over from the other runtime's threads), the
    functions' order reversed every other round (under no_grad)."""
    if block < 1:
        raise ValueError(f"block must be at least 1; got {block}")
    samples: dict[str, list[float]] = {name: [] for name in functions}
    order = list(functions)
    with torch.no_grad():
        for _ in range(warmup):
            for function in functions.values():
                function()
        for turn in range((runs + block - 1) // block):
            for name in order if turn % 2 == 0 else reversed(order):
                function = functions[name]
                function()  # the hand-over, untimed
                for _ in range(min(block, runs - turn * block)):
                    start = time.perf_counter()
                    function()
                    samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: Stats.from_ms(values) for name, values in samples.items()}


def alone(function: Callable[[], Any], min_run_time: float = 0.5) -> Stats:
    """One function by itself: torch.utils.benchmark's blocked_autorange; each sample is the
    mean of one block of calls (CUDA synchronized around it)."""
    timer = benchmark.Timer(
        stmt="function()", globals={"function": function}, num_threads=torch.get_num_threads()
    )
    with torch.no_grad():
        measurement = timer.blocked_autorange(min_run_time=min_run_time)
    return Stats.from_ms([t * 1e3 for t in measurement.times])


def graph_replays(
    functions: dict[str, Callable[[], Any]], runs: int, warmup: int = 3
) -> tuple[dict[str, Stats], dict[str, str]]:
    """Each function captured in a CUDA graph (``groupsparse.timing.capture_cuda_graph``:
    warm-up on a side stream first), then the replays timed in turns with CUDA events.
    Returns the stats and {name: why} for the functions that could not be captured."""
    from groupsparse.timing import capture_cuda_graph

    graphs, failed = {}, {}
    with torch.no_grad():
        for name, function in functions.items():
            try:
                graphs[name] = capture_cuda_graph(function, warmup)[0]
            except RuntimeError as error:  # e.g. a host sync inside the capture
                torch.cuda.synchronize()
                failed[name] = f"{type(error).__name__}: {error}"
        for graph in graphs.values():
            graph.replay()
        events: dict[str, list] = {name: [] for name in graphs}
        for _ in range(runs):
            for name, graph in graphs.items():
                start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
                start.record()
                graph.replay()
                end.record()
                events[name].append((start, end))
        torch.cuda.synchronize()
    stats = {
        name: Stats.from_ms([start.elapsed_time(end) for start, end in pairs])
        for name, pairs in events.items()
    }
    return stats, failed


def _cuda_in_use() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def _cores() -> set[int]:
    """The cores this process may run on (all of them unless it is pinned: taskset)."""
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # no sched_getaffinity (macOS)
        return set(range(os.cpu_count() or 1))


def _busy_s(cores: set[int]) -> float:
    """CPU seconds the given cores have been busy (all processes), from /proc/stat."""
    total = 0
    with open("/proc/stat") as stat:
        for line in stat:
            name, *values = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cores:
                fields = [int(v) for v in values[:7]]
                total += sum(fields) - fields[3] - fields[4]  # less idle and iowait
    return total / os.sysconf("SC_CLK_TCK")


class OtherLoad:
    """The share of this process's cores that other processes kept busy inside the ``with``
    block (0.0 = quiet, 1.0 = every core): of all the machine's cores, or of the ones it is
    pinned to (``taskset -c 1``: another process's run on core 0 is not counted); None where
    /proc/stat is missing.

        >>> with OtherLoad() as load:
        ...     pass
        >>> load.share is None or 0.0 <= load.share
        True
    """

    def __enter__(self) -> OtherLoad:  # noqa: PYI034 (Self needs Python 3.11)
        self.share: float | None = None
        self._available = os.path.exists("/proc/stat")
        if self._available:
            self._cores = _cores()
            self._start = (_busy_s(self._cores), time.process_time(), time.time())
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._available:
            return
        busy, own, wall = self._start
        others = (_busy_s(self._cores) - busy) - (time.process_time() - own)
        elapsed = max(time.time() - wall, 1e-9)
        self.share = max(0.0, others / (elapsed * len(self._cores)))
