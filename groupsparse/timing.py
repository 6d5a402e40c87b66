"""Timing in turns: the one way groupsparse compares two implementations (the compiler's
"never slower" check, the demo, and the benchmarks' interleaved A/B, benchmarks/timing.py)."""

from __future__ import annotations

import functools
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["capture_cuda_graph", "time_graphs_side_by_side", "time_side_by_side"]


def time_side_by_side(
    functions: dict[str, Callable[[], object]], runs: int, warmup: int = 3, *, shuffle: bool = False
) -> dict[str, float]:
    """Median milliseconds of each function, timed in turns (A, B, B, A, A, B, ...: the order
    reversed every other turn, so that neither always runs first, right after the other) so
    that drift in the machine's speed falls on all of them alike. With ``shuffle`` (the
    benchmarks' A/B of many variants), each pair of turns takes a new order (shuffled from a
    fixed seed) and then its reverse, so that no function always runs right after the same
    one: one that follows a large dense layer finds the cache and the threads colder, and in a
    fixed order the same kernel measured up to 34% apart by its place (python -m benchmarks
    layers at 1bd8252, 90% rows: compiled / kernel:grouped 1.00-1.34, 2 threads, AMD EPYC
    AVX-512). The compiler's per-layer timing keeps the fixed order.

    Where CUDA is in use, each call is timed from an idle GPU to an idle GPU (synchronized
    before and after), so that a function's time is its kernels' and not only their launch."""
    synchronize = _cuda_synchronize()
    with torch.no_grad():
        for _ in range(warmup):
            for function in functions.values():
                function()
        times: dict[str, list[float]] = {name: [] for name in functions}
        order, reorder = list(functions.items()), random.Random(0).shuffle
        for run in range(runs):
            if shuffle and run % 2 == 0:
                reorder(order)
            for name, function in order if run % 2 == 0 else reversed(order):
                synchronize()
                start = time.perf_counter()
                function()
                synchronize()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1e3 for name, values in times.items()}


def _cuda_synchronize() -> Callable[[], object]:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.synchronize
    return lambda: None


@functools.cache
def _side_stream(device: int) -> torch.cuda.Stream:
    # one per device for the process: the CUDA runtime keeps a cuBLAS workspace (32 MB) for
    # every stream it has run on, so a new stream per capture would leave one behind each
    return torch.cuda.Stream(device=device)


def capture_cuda_graph(function: Callable[[], Any], warmup: int = 2) -> tuple[Any, Any]:
    """``(graph, output)``: ``function`` run ``warmup`` times on a side stream (compiles,
    index tables, autotuning: what must not happen inside a capture), then captured in a CUDA
    graph on the current device; ``output`` is what the captured call returned, rewritten by
    every ``graph.replay()``."""
    side = _side_stream(torch.cuda.current_device())
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(max(1, warmup)):
            function()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        output = function()
    return graph, output


def time_graphs_side_by_side(
    functions: dict[str, Callable[[], object]], runs: int, warmup: int = 3
) -> dict[str, float]:
    """Median GPU milliseconds of each function replayed from a CUDA graph, in turns: the
    time of its kernels alone, as a model replayed from a CUDA graph pays it (no Python, no
    launch cost). Each function is warmed up and captured on the current device first."""
    with torch.no_grad():
        graphs = {name: capture_cuda_graph(f, warmup)[0] for name, f in functions.items()}
        events = {
            name: [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                   for _ in range(runs)]
            for name in graphs
        }  # fmt: skip
        for graph in graphs.values():
            graph.replay()
        for run in range(runs):
            for name, graph in graphs.items():
                start, end = events[name][run]
                start.record()
                graph.replay()
                end.record()
        torch.cuda.synchronize()
    return {
        name: statistics.median(start.elapsed_time(end) for start, end in pairs)
        for name, pairs in events.items()
    }
