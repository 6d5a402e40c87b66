"""One compiled group-sparse layer timed warm (called back to back) and right after something
else: the dense layer, a write of 64 MB (the caches flushed), a 5 ms sleep (the thread pool's
workers asleep), the torch-ops kernel. How much of a per-layer figure is the state the layer
finds the machine in rather than the kernel.

    python -m benchmarks.experiments.cold_layer [--conv 512,14 | --linear 768,768,128]
        [--sparsity 0.9] [--threads 2] [--runs 40]

Each condition: ``--runs`` calls, each preceded by its "before" step (untimed), median ms and
the median count of minor page faults the process took during the call (fresh pages of a
newly allocated output: glibc hands memory back to the system after a large free, e.g. the
dense layer's, so the next allocation faults again; ``MALLOC_TRIM_THRESHOLD_`` and
``MALLOC_MMAP_THRESHOLD_`` set high keep it, as jemalloc or tcmalloc would).
"""

from __future__ import annotations

import argparse
import copy
import resource
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import groupsparse as gs


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _median_ms(
    call: Callable[[], object], runs: int, before: Callable[[], object] | None
) -> tuple[float, float]:
    """Median ms of ``call`` and median minor page faults the process took during it."""
    samples, faults = [], []
    for _ in range(runs):
        if before is not None:
            before()
        first = _minor_faults()
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1e3)
        faults.append(_minor_faults() - first)
    return statistics.median(samples), statistics.median(faults)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conv", default="512,14", help="channels,size: a 3x3 'same' conv")
    parser.add_argument("--linear", help="in,out,tokens: a linear instead of the conv")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--group-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.linear:
        features, out, tokens = map(int, args.linear.split(","))
        dense, x = nn.Sequential(nn.Linear(features, out)), torch.randn(tokens, features)
        name = f"linear {features}->{out} x{tokens}"
    else:
        channels, size = map(int, args.conv.split(","))
        dense = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1))
        x = torch.randn(1, channels, size, size)
        name = f"conv {channels}->{channels} 3x3 {size}x{size}"
    gs.prune(dense, "group", args.sparsity, group_size=args.group_size)
    grouped = gs.compile_sparse(copy.deepcopy(dense), (x,), decide="always", kernel="grouped")
    torch_ops = gs.compile_sparse(copy.deepcopy(dense), (x,), decide="always", kernel="torch_ops")
    flush = torch.empty(64 * 2**20 // 4)
    befores: dict[str, Callable[[], object] | None] = {
        "warm (back to back)": None,
        "after the dense layer": lambda: dense(x),
        "after a 64 MB write": lambda: flush.fill_(1.0),
        "after a 5 ms sleep": lambda: time.sleep(0.005),
        "after the torch-ops kernel": lambda: torch_ops(x),
    }
    print(f"{name}, {args.sparsity:.0%} group-wise G={args.group_size}, {args.threads} threads, "
          f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}; "
          f"median of {args.runs} calls, ms")  # fmt: skip
    with torch.no_grad():
        for _ in range(5):
            grouped(x), dense(x), torch_ops(x)
        dense_ms, faults = _median_ms(lambda: dense(x), args.runs, None)
        print(f"  dense layer, warm: {dense_ms:.3f} ({faults:.0f} page faults)")
        for condition, before in befores.items():
            ms, faults = _median_ms(lambda: grouped(x), args.runs, before)
            print(f"  grouped kernel, {condition}: {ms:.3f} ({dense_ms / ms:.2f}x the warm dense; "
                  f"{faults:.0f} page faults)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
